import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starting and reaping child processes with `posix_spawn` and `waitpid`.
///
/// Foundation's `Process` learns that a child ended from a SIGCHLD handler; where that
/// signal is blocked (Swift's concurrency threads, the test runner) it never notices, its
/// `waitUntilExit` spins forever and the child stays a zombie. Here the parent reaps its
/// children itself. Each child also starts with an empty signal mask and default signal
/// actions (a child inherits the spawning thread's mask: SIGTERM blocked would make it
/// unstoppable), in its own process group, so a Ctrl-C in the terminal reaches only Kiln,
/// which then stops its children in order.
/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), which its header
/// declares only under `_GNU_SOURCE` and so Swift's Glibc module does not: found by name once.
private let addCloseFrom: (@Sendable @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: (@Sendable @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

/// glibc's `posix_spawn_file_actions_addchdir_np` (2.29 and later), found the same way.
private let addChdir: (@Sendable @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32)? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addchdir_np") else { return nil }
    return unsafeBitCast(symbol, to: (@Sendable @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32).self)
}()

public enum Spawn {
    /// Starts `path` with `arguments`; the three descriptors become its stdin, stdout, stderr,
    /// and `extraDescriptors` its 3, 4, … in order (Chromium's `--remote-debugging-pipe`
    /// talks on 3 and 4). The child gets no other descriptor of this process, whether or not
    /// it is marked close-on-exec. `environment` is added to this process's own unless
    /// `replaceEnvironment` is set. With `workingDirectory` the child starts there, else in
    /// this process's.
    public static func start(_ path: String, _ arguments: [String], environment: [String: String]? = nil, replaceEnvironment: Bool = false,
                             workingDirectory: String? = nil,
                             stdin: Int32, stdout: Int32, stderr: Int32, extraDescriptors: [Int32] = []) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let workingDirectory {
            guard let chdir = addChdir else {
                throw FarmError("cannot start \(path) in \(workingDirectory): this C library lacks posix_spawn_file_actions_addchdir_np (glibc 2.29 or later has it)")
            }
            _ = chdir(&actions, workingDirectory)
        }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        // Copies above the targets first, so that moving one onto 3 + i cannot overwrite
        // another that is still to be moved.
        let copies = extraDescriptors.map { fcntl($0, F_DUPFD_CLOEXEC, Int32(3 + extraDescriptors.count)) }
        defer { for fd in copies where fd >= 0 { close(fd) } }
        if let bad = copies.firstIndex(where: { $0 < 0 }) {
            throw FarmError("cannot pass descriptor \(extraDescriptors[bad]) to \(path): errno \(errno)")
        }
        for (i, fd) in copies.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, Int32(3 + i)) }
        // Nothing else crosses over: a descriptor this process opened without close-on-exec
        // (a lock file, a socket a library made) would otherwise live on in the child and in
        // everything it starts; an orphaned test etcd once held the test runner's lock file.
        guard let closeFrom = addCloseFrom else {
            throw FarmError("cannot start \(path): this C library lacks posix_spawn_file_actions_addclosefrom_np (glibc 2.34 or later has it)")
        }
        _ = closeFrom(&actions, Int32(3 + extraDescriptors.count))

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let base = replaceEnvironment ? [:] : ProcessInfo.processInfo.environment
        let env = (environment.map { base.merging($0) { _, new in new } } ?? base)
            .map { "\($0.key)=\($0.value)" }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
        guard rc == 0 else { throw FarmError("cannot start \(path): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// Waits for `pid` to end and returns its exit status (128 + signal if killed).
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return decode(status)
    }

    /// The exit status if `pid` has ended (reaping it), nil while it runs.
    public static func poll(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { return decode(status) }
        if r < 0 && errno == ECHILD { return -1 }
        return nil
    }

    static func decode(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// Runs a command to completion, feeding `input` to its stdin, and returns its status and
    /// combined output. The output is read while the input is written, so neither can block.
    public static func run(_ path: String, _ arguments: [String], environment: [String: String]? = nil, replaceEnvironment: Bool = false,
                           input: Data? = nil, discardStderr: Bool = false, onOutput: ((Data) -> Void)? = nil) throws -> (status: Int32, output: Data) {
        var inFDs: [Int32] = [0, 0], outFDs: [Int32] = [0, 0]
        guard pipe(&inFDs) == 0, pipe(&outFDs) == 0 else { throw FarmError("pipe() failed: errno \(errno)") }
        for fd in [inFDs[1], outFDs[0]] { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(null) }
        let pid: pid_t
        do {
            pid = try start(path, arguments, environment: environment, replaceEnvironment: replaceEnvironment, stdin: inFDs[0], stdout: outFDs[1], stderr: discardStderr ? null : outFDs[1])
        } catch {
            for fd in inFDs + outFDs { close(fd) }
            throw error
        }
        close(inFDs[0])
        close(outFDs[1])
        let writeEnd = inFDs[1]
        let writer = Thread {
            if let input, !input.isEmpty {
                input.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < raw.count {
                        let n = Glibc.write(writeEnd, raw.baseAddress! + offset, raw.count - offset)
                        if n <= 0 { if errno == EINTR { continue }; break }
                        offset += n
                    }
                }
            }
            close(writeEnd)
        }
        writer.start()
        // Read until end of file, or until the child has exited: a daemon it started (podman
        // run -d starts conmon) may hold the pipe open long after, so EOF alone is not enough.
        var output = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        let readFD = outFDs[0]
        var exit: Int32?
        func consume(_ n: Int) {
            let chunk = Data(buffer[0..<n])
            if let onOutput { onOutput(chunk) } else { output.append(chunk) }
        }
        loop: while true {
            var pfd = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            let ready = Glibc.poll(&pfd, 1, 100)
            if ready > 0 {
                let n = read(readFD, &buffer, buffer.count)
                if n > 0 { consume(n); continue }
                if n < 0 && errno == EINTR { continue }
                break loop  // end of file
            }
            if let s = poll(pid) {
                exit = s
                // Take what is already in the pipe, without waiting for the daemon.
                _ = fcntl(readFD, F_SETFL, fcntl(readFD, F_GETFL) | O_NONBLOCK)
                while true {
                    let n = read(readFD, &buffer, buffer.count)
                    if n > 0 { consume(n) } else { break }
                }
                break loop
            }
        }
        close(readFD)
        return (exit ?? wait(pid), output)
    }

    /// `run` on a thread of its own, so that a long command (debootstrap, an image import)
    /// does not hold one of the few threads Swift's concurrency has.
    public static func runDetached(_ path: String, _ arguments: [String], environment: [String: String]? = nil,
                                   onOutput: (@Sendable (Data) -> Void)? = nil) async throws -> (status: Int32, output: Data) {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try run(path, arguments, environment: environment, onOutput: onOutput) })
            }
        }
    }
}
