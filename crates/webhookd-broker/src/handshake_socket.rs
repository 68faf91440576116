//! The socket of a connection whose handshake is not over, kept so that a connect given up on is closed.
//!
//! lapin runs each connection on a thread of its own, which ends when its socket does. Until the handshake is
//! over no heartbeat is agreed, so a broker that accepts the connection but never answers (a hung node, a
//! black-holed network) keeps that thread and socket for ever, even after the caller dropped the connect (its
//! timeout, a shutdown): one more of each for every attempt, as long as the broker stays silent. So the
//! connector that webhookd gives lapin keeps a second handle to the socket while the handshake lasts, and the
//! socket is shut down when the connect is dropped or fails; lapin's thread then sees the end of the stream
//! and ends. Once the connection is open, its heartbeats watch it, and the second handle is let go.

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

enum State {
    /// The handshake goes on; the socket, once connected.
    Opening(Option<TcpStream>),
    /// The connection is open: its heartbeats watch it.
    Open,
    /// The connect was given up on: any socket it opens is shut down.
    Abandoned,
}

/// One connect's socket, shared by the connector (which opens it) and the connect's caller.
#[derive(Clone)]
pub(crate) struct HandshakeSocket(Arc<Mutex<State>>);

impl HandshakeSocket {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(State::Opening(None))))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `second` (a second handle to the socket lapin was just given) while the handshake lasts; false,
    /// after shutting it down, if the connect was given up on meanwhile.
    pub(crate) fn keep(&self, second: TcpStream) -> bool {
        let mut state = self.state();
        match &mut *state {
            State::Opening(socket) => {
                *socket = Some(second);
                true
            }
            State::Open => true,
            State::Abandoned => {
                let _ = second.shutdown(Shutdown::Both);
                false
            }
        }
    }

    /// The handshake is over: lets the second handle go, so that the socket closes when lapin drops it.
    pub(crate) fn opened(&self) {
        *self.state() = State::Open;
    }

    /// Shuts the socket down (and any the connector opens later), unless the connection is open.
    pub(crate) fn abandon(&self) {
        let mut state = self.state();
        if let State::Opening(socket) = &mut *state {
            if let Some(socket) = socket.take() {
                let _ = socket.shutdown(Shutdown::Both);
            }
            *state = State::Abandoned;
        }
    }
}

/// Abandons the socket when dropped (the connect was dropped, or failed), unless disarmed.
pub(crate) struct AbandonOnDrop(Option<HandshakeSocket>);

impl AbandonOnDrop {
    pub(crate) fn new(socket: &HandshakeSocket) -> Self {
        Self(Some(socket.clone()))
    }

    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(socket) = self.0.take() {
            socket.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair: (the client's socket, the server's end).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (client, server)
    }

    /// Whether the server's end reads the end of the stream (rather than a timeout).
    fn ended(server: &mut TcpStream) -> bool {
        matches!(server.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn a_connect_given_up_on_shuts_its_socket_down_though_another_handle_keeps_it() {
        let (client, mut server) = pair();
        let socket = HandshakeSocket::new();
        assert!(socket.keep(client.try_clone().unwrap()));
        drop(AbandonOnDrop::new(&socket));
        assert!(ended(&mut server));
        drop(client);
    }

    #[test]
    fn a_socket_opened_after_the_connect_was_given_up_on_is_refused_and_shut_down() {
        let (client, mut server) = pair();
        let socket = HandshakeSocket::new();
        socket.abandon();
        assert!(!socket.keep(client.try_clone().unwrap()));
        assert!(ended(&mut server));
    }

    #[test]
    fn an_open_connection_is_left_alone() {
        let (client, mut server) = pair();
        let socket = HandshakeSocket::new();
        assert!(socket.keep(client.try_clone().unwrap()));
        socket.opened();
        AbandonOnDrop::new(&socket).disarm();
        socket.abandon();
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let read = server.read(&mut [0u8; 1]);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );
        drop(client);
        assert!(ended(&mut server));
    }
}
