import CLibGit2
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// libgit2's standard (TCP) stream, replaced by one that connects only where this thread's
/// `FetchGuard` says: to the addresses the fetch policy checked.
///
/// libgit2 1.5 opens every network connection through its standard stream: http and git
/// directly, https under its TLS stream (mbedTLS on Debian; a custom TLS stream is not
/// registered, so libgit2's own wraps this one and still checks certificates), ssh under
/// libssh2, which is handed the socket (`kiln_socket_stream.s`, see shim.h). So the address
/// the policy checked is the address connected to: no second name lookup between the two.
///
/// Registered once per process (`register()`); a stream asked to connect on a thread without
/// a guard refuses, so nothing in the process fetches around the policy.
enum GuardedStream {
    /// Registers the stream; true once done. libgit2 must be initialised.
    static let registered: Bool = {
        var registration = git_stream_registration()
        registration.version = GIT_STREAM_VERSION
        registration.`init` = { out, host, port in
            guard let out, let host, let port else { return -1 }
            let stream = UnsafeMutablePointer<kiln_socket_stream>.allocate(capacity: 1)
            stream.initialize(to: kiln_socket_stream())
            stream.pointee.parent.version = GIT_STREAM_VERSION
            stream.pointee.host = strdup(host)
            stream.pointee.port = strdup(port)
            stream.pointee.s = -1
            stream.pointee.parent.connect = GuardedStream.connect
            stream.pointee.parent.read = GuardedStream.read
            stream.pointee.parent.write = GuardedStream.write
            stream.pointee.parent.close = GuardedStream.close
            stream.pointee.parent.free = GuardedStream.free
            out.pointee = UnsafeMutableRawPointer(stream).assumingMemoryBound(to: git_stream.self)
            return 0
        }
        // No `wrap`: that is for TLS over a proxy's tunnel, and fetches use no proxy.
        return git_stream_register(GIT_STREAM_STANDARD, &registration) == 0
    }()

    private static func state(_ stream: UnsafeMutablePointer<git_stream>?) -> UnsafeMutablePointer<kiln_socket_stream>? {
        stream.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: kiln_socket_stream.self) }
    }

    private static func fail(_ message: String) -> Int32 {
        git_error_set_str(Int32(GIT_ERROR_NET.rawValue), message)
        return -1
    }

    private static let connect: @convention(c) (UnsafeMutablePointer<git_stream>?) -> Int32 = { stream in
        guard let s = GuardedStream.state(stream), let hostC = s.pointee.host, let portC = s.pointee.port else { return GuardedStream.fail("no stream") }
        let host = String(cString: hostC), port = String(cString: portC)
        guard let fetchGuard = FetchGuard.current else {
            return GuardedStream.fail("no fetch policy is in force on this thread: connections are made only by GitMirror.fetch")
        }
        switch fetchGuard.addresses(host: host, port: port) {
        case .failure(let refusal):
            return GuardedStream.fail(refusal.message)
        case .success(let addresses):
            switch ResolvedAddress.connect(addresses, server: FetchAllowance.text(host: host, port: Int(port))) {
            case .success(let fd):
                s.pointee.s = fd
                return 0
            case .failure(let failure):
                return GuardedStream.fail(failure.message)
            }
        }
    }

    private static let read: @convention(c) (UnsafeMutablePointer<git_stream>?, UnsafeMutableRawPointer?, Int) -> Int = { stream, data, length in
        guard let s = GuardedStream.state(stream), s.pointee.s >= 0 else { return Int(GuardedStream.fail("read on a closed stream")) }
        while true {
            let n = recv(s.pointee.s, data, length, 0)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return Int(GuardedStream.fail("error receiving socket data: \(String(cString: strerror(errno)))")) }
            return n
        }
    }

    private static let write: @convention(c) (UnsafeMutablePointer<git_stream>?, UnsafePointer<CChar>?, Int, Int32) -> Int = { stream, data, length, flags in
        guard let s = GuardedStream.state(stream), s.pointee.s >= 0 else { return Int(GuardedStream.fail("write on a closed stream")) }
        while true {
            // MSG_NOSIGNAL: a server that hangs up fails this write, not the whole process.
            let n = send(s.pointee.s, data, length, flags | Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return Int(GuardedStream.fail("error sending data: \(String(cString: strerror(errno)))")) }
            return n
        }
    }

    private static let close: @convention(c) (UnsafeMutablePointer<git_stream>?) -> Int32 = { stream in
        guard let s = GuardedStream.state(stream) else { return 0 }
        if s.pointee.s >= 0 { _ = Glibc.close(s.pointee.s) }
        s.pointee.s = -1
        return 0
    }

    private static let free: @convention(c) (UnsafeMutablePointer<git_stream>?) -> Void = { stream in
        guard let s = GuardedStream.state(stream) else { return }
        if s.pointee.s >= 0 { _ = Glibc.close(s.pointee.s) }
        Glibc.free(s.pointee.host)
        Glibc.free(s.pointee.port)
        s.deinitialize(count: 1)
        s.deallocate()
    }
}
