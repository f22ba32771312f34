import { defineConfig } from 'vite';

export default defineConfig({
  // The wasm-bindgen `web` build loads its .wasm through `new URL(…, import.meta.url)`.
  optimizeDeps: { exclude: ['tidewire'] },
  build: { target: 'es2022' },
});
