// Renders the README's "React" example, which run-test.mjs copies from README.md into
// src/readme.jsx (its server URL replaced by the one in ?server=).
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './readme.jsx';

createRoot(document.getElementById('root')).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
