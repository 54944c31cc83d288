import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An error from starting or waiting for one of the farm's components. The message says
/// what is missing and what to do about it.
public struct FarmError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A child process the farm started and will stop by PID.
///
/// Its standard output and error go to `logFile` (appended), so a component that fails to
/// start can be diagnosed from the file named in the error. `stop()` sends SIGTERM, waits up
/// to `grace`, then SIGKILL; calling it twice is harmless. Started and reaped through
/// `Spawn` (posix_spawn and waitpid), never Foundation's `Process`.
public final class ManagedProcess: Sendable {
    public let name: String
    public let logFile: URL
    public let pid: Int32
    /// The exit status once the process has been reaped.
    private let exitStatus = Mutex<Int32?>(nil)

    public var isRunning: Bool { status == nil }

    /// The exit status, or nil while it runs (reaps it if it has ended).
    public var status: Int32? {
        exitStatus.withLock { s in
            if s == nil, let r = Spawn.poll(pid) { s = r }
            return s
        }
    }

    /// Starts `executable` (a path, or a name looked up on PATH) with `arguments`.
    public init(
        name: String,
        executable: String,
        arguments: [String],
        environment: [String: String]? = nil,
        workingDirectory: URL? = nil,
        logFile: URL
    ) throws {
        self.name = name
        self.logFile = logFile
        guard let path = ManagedProcess.which(executable) else {
            throw FarmError("\(name): the program '\(executable)' is not installed (not found on PATH). Run scripts/install-deps.sh as root, or apt-get install the package that provides it.")
        }
        try FileManager.default.createDirectory(at: logFile.deletingLastPathComponent(), withIntermediateDirectories: true)
        let log = open(logFile.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw FarmError("\(name): cannot open its log \(logFile.path): errno \(errno)") }
        defer { close(log) }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        self.pid = try Spawn.start(path, arguments, environment: environment, workingDirectory: workingDirectory?.path,
                                   stdin: null, stdout: log, stderr: log)
    }

    deinit {
        // Never leave a child behind, nor a zombie.
        if isRunning { stop(grace: 2) }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace` seconds.
    public func stop(grace: Double = 5) {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while isRunning && Date() < deadline { usleep(20_000) }
        if isRunning {
            kill(pid, SIGKILL)
            waitBriefly()
        }
    }

    /// Sends SIGKILL at once (for tests that kill a component on purpose).
    public func killNow() {
        guard isRunning else { return }
        kill(pid, SIGKILL)
        waitBriefly()
    }

    /// Waits up to 5 s for the process to be reaped after SIGKILL.
    private func waitBriefly() {
        let deadline = Date().addingTimeInterval(5)
        while isRunning && Date() < deadline { usleep(10_000) }
    }

    /// The last `lines` lines of the log file, for error messages.
    public func logTail(lines: Int = 20) -> String {
        guard let text = try? String(contentsOf: logFile, encoding: .utf8) else { return "" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Waits until `ready()` returns true, the process exits, or `timeout` passes.
    /// Polls every 50 ms: a process that just started has no event to wait on.
    public func waitUntilReady(timeout: Double, _ ready: @Sendable () async -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let s = status {
                throw FarmError("\(name) exited with status \(s) while starting. Its log (\(logFile.path)) ends with:\n\(logTail())")
            }
            if await ready() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw FarmError("\(name) did not become ready within \(Int(timeout)) s. Its log (\(logFile.path)) ends with:\n\(logTail())")
    }

    /// The full path of `program` on PATH, or nil.
    public static func which(_ program: String) -> String? {
        if program.contains("/") { return FileManager.default.isExecutableFile(atPath: program) ? program : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(program)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs a short command to completion and returns its exit status and combined output.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
        guard let path = which(executable) else {
            throw FarmError("the program '\(executable)' is not installed (not found on PATH)")
        }
        let r = try Spawn.run(path, arguments, environment: environment)
        return (r.status, String(decoding: r.output, as: UTF8.self))
    }
}

/// Free TCP ports on the loopback interface.
public enum FreePort {
    /// A port that was free a moment ago on 127.0.0.1 (bound to port 0, read back, closed).
    public static func next() throws -> Int {
        let (fd, port) = try boundLoopbackSocket(flags: 0)
        close(fd)
        return port
    }

    /// A loopback port that refuses connections for as long as the returned value lives: a socket
    /// bound to it that never listens. Nothing else can bind the port meanwhile (no
    /// `SO_REUSEADDR` here) and the kernel does not hand it out for outgoing connections, so a
    /// test that wants "connection refused" gets it, where a port `next()` found free could be
    /// taken by another test's server before the connection is tried. Close-on-exec: a child
    /// process must not inherit it and hold the port past the test.
    public static func refusing() throws -> RefusingPort {
        let (fd, port) = try boundLoopbackSocket(flags: Int32(SOCK_CLOEXEC.rawValue))
        return RefusingPort(fd: fd, port: port)
    }

    /// A TCP socket bound to 127.0.0.1 on a port the kernel chose, and that port.
    private static func boundLoopbackSocket(flags: Int32) throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | flags, 0)
        guard fd >= 0 else { throw FarmError("socket() failed: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { close(fd); throw FarmError("bind() to 127.0.0.1:0 failed: errno \(errno)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard named == 0 else { close(fd); throw FarmError("getsockname() failed: errno \(errno)") }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// Whether something already listens on `host` (an IPv4 address):`port`.
    public static func isInUse(_ port: Int, host: String = "127.0.0.1") -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr(host)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return r == 0
    }
}

/// A loopback port held bound and never listening (`FreePort.refusing()`): connections to it are
/// refused until this value is released.
public final class RefusingPort: @unchecked Sendable {
    private let fd: Int32
    public let port: Int
    init(fd: Int32, port: Int) { self.fd = fd; self.port = port }
    deinit { close(fd) }
}
