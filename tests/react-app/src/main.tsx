// The test page: the app under <StrictMode> (a development build, so effects run twice).
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { Root } from './App';

const el = document.getElementById('root');
if (el === null) throw new Error('no #root');
createRoot(el).render(
  <StrictMode>
    <Root />
  </StrictMode>,
);
