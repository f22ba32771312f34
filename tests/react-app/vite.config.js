import { defineConfig } from 'vite';

export default defineConfig({
  // The wasm-bindgen `web` build loads its .wasm through `new URL(…, import.meta.url)`.
  optimizeDeps: { exclude: ['tidewire'] },
  oxc: { jsx: { runtime: 'automatic', importSource: 'react' } },
  build: { target: 'es2022', minify: false },
});
