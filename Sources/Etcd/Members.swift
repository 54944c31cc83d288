import AsyncHTTPClient
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Which member of an etcd cluster a client's calls go to, without I/O or clock. ``EtcdMembers``
/// keeps one behind a lock for every copy of a client.
///
/// The rules, in order:
/// 1. A call goes first to the current member: the first one listed, until it fails.
/// 2. A member that failed a call (no connection, or no answer) stops being the current one:
///    the next one listed takes its place, unless another call has moved on from it already
///    (so that many calls failing at once on one dead member move on once, not many times).
/// 3. A call that certainly did not reach etcd's store (the connection could not be made,
///    or the member said it has no leader), or that only reads, is tried again at once on the
///    current member if this call has not tried it yet, else on the next member it has not
///    tried; each member at most once per call.
/// 4. Any other call that failed without an answer (sent, then the connection broke or timed
///    out) may have been applied: it is not repeated; its caller decides (a guarded write's
///    retry then finds its guard changed), and its next call goes to the next member.
/// 5. Once every member failed one call, it fails.
/// 6. Unless a member answered that it cannot serve the call now (no leader, a leader being
///    elected) and the call may be repeated by rule 3: then the round starts again after the
///    ``Backoff`` wait, for as long as the call's deadline allows, and the last such answer is
///    the call's if none serves it. An election takes a second or two.
struct MemberState: Equatable {
    let count: Int
    /// The member calls go to now.
    private(set) var current = 0

    init(count: Int) {
        precondition(count > 0, "an etcd client needs at least one endpoint")
        self.count = count
    }

    /// The member a call goes to next when it has already tried `tried` (rules 1 and 3), or
    /// nil when it has tried them all (rule 5).
    func next(excluding tried: Set<Int>) -> Int? {
        for step in 0..<count {
            let member = (current + step) % count
            if !tried.contains(member) { return member }
        }
        return nil
    }

    /// A call to `member` failed without an answer (rule 2).
    mutating func failed(_ member: Int) {
        if member == current { current = (current + 1) % count }
    }

    /// Whether a call that failed with `failure` is tried on another member (rules 3 and 4).
    static func retries(_ failure: CallFailure, idempotent: Bool) -> Bool {
        switch failure {
        case .notSent: return true
        case .noAnswer: return idempotent
        }
    }
}

/// How a call to one member failed, for ``MemberState``.
enum CallFailure: Equatable {
    /// etcd's store cannot have seen it: no connection was made, or the member answered that
    /// it has no leader (it proposes nothing then).
    case notSent
    /// It may have been applied: the connection broke or timed out after it was sent.
    case noAnswer

    /// Sorts an error of the HTTP client. Only errors raised before a connection existed
    /// count as not sent: a refused or timed-out connect, a name that does not resolve, a
    /// TLS handshake that failed, no connection from the pool in time, a write on a pooled
    /// connection that was already closed.
    static func of(_ error: any Error) -> CallFailure {
        if error is NIOConnectionError || error is NIOSSLError { return .notSent }
        if let error = error as? ChannelError, case .connectTimeout = error { return .notSent }
        // A pooled keep-alive connection whose member died (its close already read) takes
        // no write: the request never left. Seen when a member is killed between two calls.
        if let error = error as? ChannelError, case .ioOnClosedChannel = error { return .notSent }
        if let error = error as? IOError, [ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL].contains(error.errnoCode) {
            return .notSent
        }
        if let error = error as? HTTPClientError,
           [HTTPClientError.connectTimeout, .getConnectionFromPoolTimeout, .tlsHandshakeTimeout].contains(error) {
            return .notSent
        }
        return .noAnswer
    }

    /// An answer of a member that cannot serve the call now, or nil for any other answer
    /// (a result, or a refusal that another member would repeat). "no leader": the member
    /// proposed nothing. Unavailable, timed out or leader changed: maybe applied.
    static func of(status: UInt, grpcCode: Int?, message: String) -> CallFailure? {
        guard status != 200 else { return nil }
        if message.contains("no leader") { return .notSent }
        if [1, 4, 14].contains(grpcCode ?? 0) || [408, 502, 503, 504].contains(status) { return .noAnswer }
        return nil
    }
}

/// The members of one client and the current one (``MemberState``), shared by every copy of
/// the client, so that one call that found a member dead spares the others the attempt.
final class EtcdMembers: Sendable {
    /// The client URLs, in the order given.
    let endpoints: [String]
    private let state: Mutex<MemberState>

    init(_ endpoints: [String]) {
        self.endpoints = endpoints
        state = Mutex(MemberState(count: endpoints.count))
    }

    var current: Int { state.withLock { $0.current } }

    func next(excluding tried: Set<Int>) -> Int? {
        state.withLock { $0.next(excluding: tried) }
    }

    func failed(_ member: Int) {
        state.withLock { $0.failed(member) }
    }
}

extension EtcdClient {
    /// The URLs of `--etcd` (or `KILN_ETCD`): one, or several members' separated by commas;
    /// spaces around them and trailing slashes are dropped, empty ones ignored. Pure; see
    /// ``checkEndpoints(_:tls:)`` for what a usable list is.
    public static func parseEndpoints(_ text: String) -> [String] {
        text.split(separator: ",").compactMap { part in
            var url = part.drop { $0 == " " || $0 == "\t" }
            while let last = url.last, last == " " || last == "\t" || last == "/" { url.removeLast() }
            return url.isEmpty ? nil : String(url)
        }
    }

    /// Checks a list of members' URLs, without I/O: at least one, none twice, each by the rule
    /// of ``checkEndpoint(_:tls:)``. Throws `.misconfigured` saying what to change.
    public static func checkEndpoints(_ endpoints: [String], tls: EtcdTLS?) throws {
        guard !endpoints.isEmpty else {
            throw EtcdError.misconfigured("", "no etcd URL given: pass --etcd http://127.0.0.1:2379, or the members of a cluster as --etcd https://a:2379,https://b:2379,https://c:2379")
        }
        var seen = Set<String>()
        for endpoint in endpoints {
            guard seen.insert(endpoint).inserted else {
                throw EtcdError.misconfigured(endpoint, "\(endpoint) is listed twice in --etcd: name each member once")
            }
            try checkEndpoint(endpoint, tls: tls)
        }
    }
}
