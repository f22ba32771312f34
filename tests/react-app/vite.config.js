import { defineConfig } from 'vite';

export default defineConfig({
  // The wasm-bindgen `web` build loads its .wasm through `new URL(…, import.meta.url)`.
  optimizeDeps: { exclude: ['tidewire'] },
  oxc: { jsx: { runtime: 'automatic', importSource: 'react' } },
  build: {
    target: 'es2022',
    minify: false,
    // The test app, and the README's example (src/readme.jsx, written by run-test.mjs).
    rollupOptions: { input: { main: 'index.html', readme: 'readme.html' } },
  },
});
