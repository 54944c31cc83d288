import Foundation
import KilnCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A hostile git server on 127.0.0.1: it accepts connections and then never finishes an
/// answer, the way a server that hangs would. `silent` says nothing at all; `partialHTTP`
/// reads the request and sends the start of a smart-HTTP answer (status, headers announcing
/// more bytes than come, the first pkt-line), then stalls. Connections stay open until `stop`.
/// `redirect` answers every request with a 301 to the URL given (what a git server the agent
/// may fetch from would send to bounce it elsewhere), and closes the connection.
/// `accepted` counts the connections: with `silent` it is a stand-in for a service that must
/// see no connection.
public final class StallingServer: Sendable {
    public enum Mode: Sendable { case silent, partialHTTP, redirect(to: String) }

    public let port: Int
    public let mode: Mode
    private let listener: Int32
    private let state = Mutex<(accepted: Int, open: [Int32], stopped: Bool)>((0, [], false))

    /// The URL of a repository on it.
    public var url: String { "http://127.0.0.1:\(port)/stalled.git" }
    /// Connections accepted so far.
    public var accepted: Int { state.withLock { $0.accepted } }

    public init(_ mode: Mode) throws {
        self.mode = mode
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CommandFailed(description: "socket: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, len) == 0 && listen(fd, 16) == 0 && getsockname(fd, sa, &len) == 0
            }
        }
        guard ok else {
            close(fd)
            throw CommandFailed(description: "bind/listen on 127.0.0.1: errno \(errno)")
        }
        listener = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        while true {
            let c = accept(listener, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return  // stopped
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            let keep = state.withLock { s -> Bool in
                if s.stopped { return false }
                s.accepted += 1
                s.open.append(c)
                return true
            }
            guard keep else { close(c); return }
            switch mode {
            case .silent: break
            case .partialHTTP: Thread.detachNewThread { StallingServer.answerPartially(c) }
            case .redirect(let location): Thread.detachNewThread { StallingServer.redirect(c, to: location) }
            }
        }
    }

    /// Reads the request head, sends a truncated upload-pack advertisement, and goes quiet.
    private static func answerPartially(_ fd: Int32) {
        guard readHead(fd) else { return }
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nCache-Control: no-cache\r\nContent-Length: 4096\r\n\r\n001e# service=git-upload-pack\n"
        _ = answer.withCString { write(fd, $0, strlen($0)) }
    }

    /// Reads the request head, answers 301 to `location`, and shuts the connection down.
    private static func redirect(_ fd: Int32, to location: String) {
        guard readHead(fd) else { return }
        let answer = "HTTP/1.1 301 Moved Permanently\r\nLocation: \(location)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        _ = answer.withCString { write(fd, $0, strlen($0)) }
        shutdown(fd, Int32(SHUT_RDWR))
    }

    /// Reads up to the end of a request head; false when the peer went away first.
    private static func readHead(_ fd: Int32) -> Bool {
        var head = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !head.suffix(4).elementsEqual(Array("\r\n\r\n".utf8)) {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { return false }
            head += buffer[0..<n]
        }
        return true
    }

    /// Closes the listener and every connection.
    public func stop() {
        let fds = state.withLock { s -> [Int32]? in
            if s.stopped { return nil }
            s.stopped = true
            defer { s.open = [] }
            return s.open
        }
        guard let fds else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for fd in fds { close(fd) }
    }

    deinit { stop() }
}

/// Processes whose command line contains `text` (from /proc), for checking that a child is gone.
public func processes(containing text: String) -> [Int32] {
    let me = getpid()
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard pid != me, let data = ProcFile.data("/proc/\(pid)/cmdline") else { return false }
        // A zombie has an empty command line: it is gone but for its exit status.
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(text)
    }
}

/// The processes whose command line contains `text` once they had up to `within` to exit: a
/// child killed with SIGKILL is gone a moment after the kill, not at the instant its parent
/// moves on (on a loaded machine that moment can be long). Empty when they all exited.
public func processesLeft(containing text: String, within: Duration = .seconds(5)) async -> [Int32] {
    let deadline = ContinuousClock.now + within
    var left = processes(containing: text)
    while !left.isEmpty, ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(50))
        left = processes(containing: text)
    }
    return left
}
