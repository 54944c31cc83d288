import Foundation
import Processes
#if canImport(Glibc)
import Glibc
#endif

/// The fetch policy of the fetch running on this thread, and the one server its connections
/// may go to. `GitMirror.fetch` installs one around its libgit2 calls; the agent's stream
/// (`GuardedStream`), which libgit2 asks for every TCP connection of a fetch (http, https,
/// git, ssh), asks it where to connect.
///
/// Rules it keeps:
/// - The first connection of a fetch names its server (the host and port libgit2 took from the
///   URL); a later connection to another host or port can only come from an HTTP redirect
///   (no proxy is used), and is refused. libgit2's `GIT_REMOTE_REDIRECT_NONE` refuses only a
///   redirect to another host: this also catches one to another port of the same host.
/// - The server's name is resolved once per fetch, the addresses are checked by the policy,
///   and the connections go to exactly those addresses: a name that resolves to a public
///   address for the check and to 127.0.0.1 for the connection (DNS rebinding) gets nowhere.
/// Thread-confined: libgit2 opens a fetch's streams on the thread that called it.
final class FetchGuard {
    let policy: FetchPolicy
    /// The server of the fetch's first connection, the only one its connections go to.
    private(set) var server: (host: String, port: Int)?
    /// The check of `server`, made once: every connection of the fetch uses its addresses.
    private var checked: Result<[ResolvedAddress], FetchRefusal>?
    /// Why the last connection was refused; the fetch reports this rather than libgit2's text.
    private(set) var refusal: String?

    init(policy: FetchPolicy) {
        self.policy = policy
    }

    /// The checked addresses a connection to `host`:`port` goes to, or why it may not.
    func addresses(host: String, port portText: String) -> Result<[ResolvedAddress], FetchRefusal> {
        let result = decide(host: host, portText: portText)
        if case .failure(let refused) = result, refused.byPolicy { refusal = refused.message }
        return result
    }

    private func decide(host: String, portText: String) -> Result<[ResolvedAddress], FetchRefusal> {
        guard let port = Int(portText), (1...65535).contains(port) else {
            return .failure(FetchRefusal("the port '\(portText)' of \(host) is not a number from 1 to 65535"))
        }
        if let server {
            guard server.host.lowercased() == host.lowercased(), server.port == port else {
                let from = FetchAllowance.text(host: server.host, port: server.port), to = FetchAllowance.text(host: host, port: port)
                return .failure(FetchRefusal("the server \(from) sent the fetch on to \(to) (an HTTP redirect): the agent follows no redirect to another host or port. Set the project's repository to the URL the server redirects to"))
            }
            if let checked { return checked }
        }
        server = (host, port)
        let result = FetchGuard.check(host: host, port: port, policy: policy)
        checked = result
        return result
    }

    /// Resolves `host` and lets the policy judge every address it has (pure but for the
    /// resolver and the list of this machine's addresses).
    static func check(host: String, port: Int, policy: FetchPolicy) -> Result<[ResolvedAddress], FetchRefusal> {
        let resolved: [ResolvedAddress]
        switch ResolvedAddress.resolve(host: host, port: port) {
        case .success(let found): resolved = found
        case .failure(let error):
            return .failure(FetchRefusal("cannot resolve \(FetchAllowance.text(host: host, port: port)): \(error.message)", byPolicy: false))
        }
        let own = Set(HostAddresses.current().compactMap(IPAddress.init(bytes:)))
        if let why = policy.refusal(host: host, port: port, addresses: resolved.map(\.ip), own: own) {
            return .failure(FetchRefusal(why))
        }
        return .success(resolved)
    }

    // MARK: the current thread's guard

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
        return key
    }()

    /// Runs `body` with `fetchGuard` as this thread's guard.
    static func installed<R>(_ fetchGuard: FetchGuard, _ body: () throws -> R) rethrows -> R {
        let previous = pthread_getspecific(key)
        let box = Unmanaged.passRetained(fetchGuard)
        pthread_setspecific(key, box.toOpaque())
        defer {
            pthread_setspecific(key, previous)
            box.release()
        }
        return try body()
    }

    /// This thread's guard; nil outside `installed` (a stream then refuses to connect).
    static var current: FetchGuard? {
        pthread_getspecific(key).map { Unmanaged<FetchGuard>.fromOpaque($0).takeUnretainedValue() }
    }
}

/// Why a connection of a fetch is not made: the policy refused (the message names the option
/// that allows it), or the name did not resolve, or no address accepted.
struct FetchRefusal: Error, Equatable {
    let message: String
    /// The policy refused, rather than the network failing.
    let byPolicy: Bool
    init(_ message: String, byPolicy: Bool = true) {
        self.message = message
        self.byPolicy = byPolicy
    }
}

/// One address the resolver gave for a host: the socket address to connect to, and the
/// address the policy judged.
struct ResolvedAddress {
    let ip: IPAddress
    let family: Int32
    let storage: sockaddr_storage
    let length: socklen_t

    /// getaddrinfo for a stream connection to `host`:`port`, every family; the resolver's
    /// own message on failure.
    static func resolve(host: String, port: Int) -> Result<[ResolvedAddress], FetchRefusal> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let code = getaddrinfo(host, String(port), &hints, &list)
        guard code == 0 else { return .failure(FetchRefusal(String(cString: gai_strerror(code)), byPolicy: false)) }
        defer { freeaddrinfo(list) }
        var found: [ResolvedAddress] = []
        var cursor = list
        while let entry = cursor {
            cursor = entry.pointee.ai_next
            guard let sa = entry.pointee.ai_addr, let bytes = HostAddresses.addressBytes(sa), let ip = IPAddress(bytes: bytes) else { continue }
            var storage = sockaddr_storage()
            let length = min(Int(entry.pointee.ai_addrlen), MemoryLayout<sockaddr_storage>.size)
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: length)) }
            found.append(ResolvedAddress(ip: ip, family: entry.pointee.ai_family, storage: storage, length: socklen_t(length)))
        }
        return found.isEmpty ? .failure(FetchRefusal("no address", byPolicy: false)) : .success(found)
    }

    /// A connected stream socket to the first of `addresses` that accepts, or why none did.
    static func connect(_ addresses: [ResolvedAddress], server: String) -> Result<Int32, FetchRefusal> {
        var errors: [String] = []
        for address in addresses {
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { errors.append("\(address.ip): \(String(cString: strerror(errno)))"); continue }
            var storage = address.storage
            let result = withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, address.length) }
            }
            if result == 0 { return .success(fd) }
            errors.append("\(address.ip): \(String(cString: strerror(errno)))")
            close(fd)
        }
        return .failure(FetchRefusal("failed to connect to \(server) (\(errors.joined(separator: "; ")))", byPolicy: false))
    }
}
