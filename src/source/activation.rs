//! systemd socket activation: listening sockets passed by the service
//! manager (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), looked up by the
//! socket unit's `FileDescriptorName=`. With them the daemon listens on
//! privileged ports (514, 6514) without holding any capability.

use std::io;

/// The sockets systemd passed to this process, by name.
pub struct Activated {
    fds: listenfd::ListenFd,
    names: Vec<String>,
}

impl Activated {
    pub fn from_env() -> Activated {
        let names = sd_notify::listen_fds_with_names()
            .map(|fds| fds.map(|(_, name)| name).collect())
            .unwrap_or_default();
        Activated {
            fds: listenfd::ListenFd::from_env(),
            names,
        }
    }

    fn index(&self, name: &str) -> io::Result<usize> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "systemd passed no socket named `{name}` (passed: {}); check the socket unit's FileDescriptorName= and Service=",
                    if self.names.is_empty() {
                        "none".to_owned()
                    } else {
                        self.names.join(", ")
                    }
                ),
            )
        })
    }

    fn taken(name: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("the systemd socket `{name}` is used by two sources"),
        )
    }

    /// The datagram socket named `name`, non-blocking.
    pub fn udp(&mut self, name: &str) -> io::Result<std::net::UdpSocket> {
        let i = self.index(name)?;
        let socket = self
            .fds
            .take_udp_socket(i)?
            .ok_or_else(|| Self::taken(name))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// The stream listener named `name`, non-blocking.
    pub fn tcp(&mut self, name: &str) -> io::Result<std::net::TcpListener> {
        let i = self.index(name)?;
        let listener = self
            .fds
            .take_tcp_listener(i)?
            .ok_or_else(|| Self::taken(name))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }
}
