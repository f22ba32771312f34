// Socket.IO 4 peer for the Tidewire benchmarks: WebSocket transport only, every client in
// one room, `POST /publish` emits the JSON body to the room.
// Usage: node server.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 3000);
const srv = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      try {
        io.to('bench').emit('e', JSON.parse(body));
        res.end('ok');
      } catch (e) {
        res.statusCode = 400;
        res.end(String(e));
      }
    });
  } else {
    res.statusCode = 404;
    res.end();
  }
});
const io = new Server(srv, { transports: ['websocket'], serveClient: false });
io.on('connection', (s) => s.join('bench'));
srv.listen(port, '127.0.0.1', () => console.log(`socketio listening on ${port}`));
