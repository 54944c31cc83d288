import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

extension Spawn {
    /// What a child said and how it ended.
    public struct Outcome: Sendable {
        /// Exit status, 128 + signal when it was killed.
        public var status: Int32
        public var stdout: Data
        public var stderr: Data

        public init(status: Int32, stdout: Data, stderr: Data) {
            self.status = status
            self.stdout = stdout
            self.stderr = stderr
        }
    }

    /// Runs `path` to its end on a thread of its own, collecting stdout and stderr apart (each
    /// up to `outputLimit` bytes; the rest is read and dropped). Cancelling the calling task
    /// kills the child's whole process group with SIGKILL (the child leads a group of its
    /// own, see `start`), so a child blocked in a system call that nothing else would end (a
    /// read from a silent server) stops at once; this then throws `CancellationError`.
    ///
    /// stdin is `input`, then end of file (/dev/null without it): what must stay out of the
    /// command line and the environment, which `ps` and `/proc/PID/environ` show, goes there.
    /// A child that exits before reading all of it does not stop this process (no SIGPIPE).
    public static func runCancellable(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                                      input: Data? = nil, outputLimit: Int = 1 << 20) async throws -> Outcome {
        let child = Child()
        let outcome: Outcome = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Outcome, Error>) in
                Thread.detachNewThread {
                    c.resume(with: Result { try runToEnd(path, arguments, environment: environment, input: input, outputLimit: outputLimit, child: child) })
                }
            }
        } onCancel: {
            child.kill()
        }
        if child.wasKilled { throw CancellationError() }
        return outcome
    }

    /// The child's pid while it may be signalled: from its start until it has exited but
    /// before it is reaped, so a kill can never reach a reused pid.
    private final class Child: Sendable {
        private struct State { var pid: pid_t?; var cancelled = false; var exited = false; var killed = false }
        private let state = Mutex(State())

        /// False when cancellation came first: the caller must not start the child.
        func started(_ pid: pid_t) -> Bool {
            state.withLock { s in
                s.pid = pid
                if s.cancelled { s.killed = true; Glibc.kill(-pid, SIGKILL) }
                return !s.cancelled
            }
        }

        var isCancelled: Bool { state.withLock { $0.cancelled } }
        var wasKilled: Bool { state.withLock { $0.killed || ($0.cancelled && $0.pid == nil) } }

        func kill() {
            state.withLock { s in
                s.cancelled = true
                if let pid = s.pid, !s.exited { s.killed = true; Glibc.kill(-pid, SIGKILL) }
            }
        }

        func exited() { state.withLock { $0.exited = true } }
    }

    private static func runToEnd(_ path: String, _ arguments: [String], environment: [String: String]?, input: Data?, outputLimit: Int, child: Child) throws -> Outcome {
        if child.isCancelled { return Outcome(status: 128 + SIGKILL, stdout: Data(), stderr: Data()) }
        var outFDs: [Int32] = [0, 0], errFDs: [Int32] = [0, 0]
        guard pipe(&outFDs) == 0 else { throw FarmError("pipe() failed: errno \(errno)") }
        guard pipe(&errFDs) == 0 else {
            close(outFDs[0]); close(outFDs[1])
            throw FarmError("pipe() failed: errno \(errno)")
        }
        // Another child spawned meanwhile gets none of these (`start` closes all but 0-2 in
        // its children); close-on-exec is for anything else that execs.
        for fd in outFDs + errFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let stdin: (child: Int32, writer: Int32?)
        do {
            stdin = try makeStdin(for: input)
        } catch {
            for fd in outFDs + errFDs { close(fd) }
            throw error
        }
        let pid: pid_t
        do {
            pid = try start(path, arguments, environment: environment, stdin: stdin.child, stdout: outFDs[1], stderr: errFDs[1])
        } catch {
            for fd in outFDs + errFDs { close(fd) }
            close(stdin.child)
            stdin.writer.map { _ = close($0) }
            throw error
        }
        close(stdin.child)
        close(outFDs[1])
        close(errFDs[1])
        _ = child.started(pid)
        if let writer = stdin.writer, let input {
            // On a thread of its own: a child that writes much before it reads cannot block us.
            Thread.detachNewThread { writeAll(input, to: writer) }
        }

        // Read both pipes until both end: the child's whole group has exited (or closed them).
        var collected = [Data(), Data()]
        var open = [true, true]
        let fds = [outFDs[0], errFDs[0]]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while open.contains(true) {
            var pfds = fds.enumerated().map { pollfd(fd: open[$0.offset] ? $0.element : -1, events: Int16(POLLIN), revents: 0) }
            let ready = Glibc.poll(&pfds, 2, -1)
            if ready < 0 { if errno == EINTR { continue }; break }
            for i in 0..<2 where open[i] && pfds[i].revents != 0 {
                let n = read(fds[i], &buffer, buffer.count)
                if n > 0 {
                    let room = max(0, outputLimit - collected[i].count)
                    if room > 0 { collected[i].append(contentsOf: buffer[0..<min(n, room)]) }
                } else if n == 0 || errno != EINTR {
                    open[i] = false
                }
            }
        }
        for fd in fds { close(fd) }
        // Wait for the exit without reaping, so that `kill` cannot hit a reused pid.
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
        child.exited()
        return Outcome(status: wait(pid), stdout: collected[0], stderr: collected[1])
    }

    /// The child's stdin and the end this process writes `input` to: a socket pair rather
    /// than a pipe, so that writing after the child has gone fails with EPIPE (MSG_NOSIGNAL)
    /// instead of killing this process with SIGPIPE. Without input: /dev/null.
    private static func makeStdin(for input: Data?) throws -> (child: Int32, writer: Int32?) {
        guard input != nil else {
            let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard null >= 0 else { throw FarmError("cannot open /dev/null: errno \(errno)") }
            return (null, nil)
        }
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw FarmError("socketpair() failed: errno \(errno)")
        }
        _ = shutdown(pair[0], Int32(SHUT_WR))
        return (pair[0], pair[1])
    }

    /// Writes `data` to the socket `fd`, then closes it (the child reads end of file).
    private static func writeAll(_ data: Data, to fd: Int32) {
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                offset += n
            }
        }
        close(fd)
    }
}
