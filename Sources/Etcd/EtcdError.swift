/// An error from talking to etcd.
///
/// A struct over a private code, so new kinds can be added without breaking callers. Compare
/// with the static values, which match on the kind only:
/// `catch let error as EtcdError where error == .leaseNotFound`, or `catch EtcdError.leaseNotFound`.
/// The `description` says what happened, at which endpoint, and what the gateway answered.
public struct EtcdError: Error, CustomStringConvertible, Sendable, Equatable {
    private enum Code: Sendable, Equatable {
        case unreachable
        case leaseNotFound
        case compacted
        case badResponse
        case rejected
        case watchCanceled
        case unauthenticated
        case permissionDenied
        case misconfigured
        case noSpace
    }

    private let code: Code
    /// What happened, in words, without the endpoint.
    public let message: String
    /// The etcd endpoint the request went to, when known.
    public let endpoint: String?
    /// The HTTP status of the gateway's answer, when there was one.
    public let httpStatus: Int?
    /// The gRPC code in the gateway's error body (e.g. 3 invalid argument, 5 not found, 11 out of range, 14 unavailable).
    public let grpcCode: Int?

    private init(_ code: Code, _ message: String, endpoint: String? = nil, httpStatus: Int? = nil, grpcCode: Int? = nil) {
        self.code = code
        self.message = message
        self.endpoint = endpoint
        self.httpStatus = httpStatus
        self.grpcCode = grpcCode
    }

    public var description: String {
        var text = "etcd"
        if let endpoint { text += " at \(endpoint)" }
        text += ": \(message)"
        var details: [String] = []
        if let httpStatus { details.append("HTTP \(httpStatus)") }
        if let grpcCode { details.append("gRPC code \(grpcCode)") }
        if !details.isEmpty { text += " (\(details.joined(separator: ", ")))" }
        return text
    }

    /// Matches on the kind of error only.
    public static func == (lhs: EtcdError, rhs: EtcdError) -> Bool { lhs.code == rhs.code }

    /// Lets `catch EtcdError.leaseNotFound` match any error of that kind.
    public static func ~= (pattern: EtcdError, value: any Error) -> Bool {
        (value as? EtcdError)?.code == pattern.code
    }

    /// The connection failed or timed out: etcd is down, restarting, or the endpoint is wrong.
    public static var unreachable: EtcdError { EtcdError(.unreachable, "unreachable") }
    /// The lease does not exist (it expired or was revoked), or could not be renewed within its TTL.
    public static var leaseNotFound: EtcdError { EtcdError(.leaseNotFound, "lease not found") }
    /// The revision asked for was compacted away.
    public static var compacted: EtcdError { EtcdError(.compacted, "revision compacted") }
    /// The answer could not be understood (not the JSON the gateway should send).
    public static var badResponse: EtcdError { EtcdError(.badResponse, "bad response") }
    /// etcd refused the request (bad argument, no leader, ...); `message` holds its reason.
    public static var rejected: EtcdError { EtcdError(.rejected, "request rejected") }
    /// etcd canceled a watch for a reason other than compaction.
    public static var watchCanceled: EtcdError { EtcdError(.watchCanceled, "watch canceled") }

    /// etcd wants a user and password and has none, or refused them, or refused the token
    /// even after the client authenticated again.
    public static var unauthenticated: EtcdError { EtcdError(.unauthenticated, "unauthenticated") }
    /// The user may not read or write a key the request touches; `message` names the key and the user.
    public static var permissionDenied: EtcdError { EtcdError(.permissionDenied, "permission denied") }
    /// etcd's database reached its space quota (`--quota-backend-bytes`): it raised the NOSPACE
    /// alarm and refuses every write until space is freed and the alarm disarmed; reads and
    /// deletes still work. Not transient: waiting does not help (docs/etcd-operations.md).
    public static var noSpace: EtcdError { EtcdError(.noSpace, "no space") }
    /// The client cannot be used as configured (an endpoint that would send credentials in
    /// clear over the network, TLS files that cannot be read); `message` says what to change.
    public static var misconfigured: EtcdError { EtcdError(.misconfigured, "misconfigured") }

    static func unauthenticated(_ endpoint: String, _ detail: String, httpStatus: Int? = nil, grpcCode: Int? = nil) -> EtcdError {
        EtcdError(.unauthenticated, detail, endpoint: endpoint, httpStatus: httpStatus, grpcCode: grpcCode)
    }
    static func permissionDenied(_ endpoint: String, _ detail: String) -> EtcdError {
        EtcdError(.permissionDenied, detail, endpoint: endpoint, httpStatus: 403, grpcCode: 7)
    }
    static func misconfigured(_ endpoint: String, _ detail: String) -> EtcdError {
        EtcdError(.misconfigured, detail, endpoint: endpoint)
    }

    static func unreachable(_ endpoint: String, _ detail: String) -> EtcdError {
        EtcdError(.unreachable, "unreachable: \(detail)", endpoint: endpoint)
    }
    static func leaseNotFound(_ endpoint: String, _ detail: String) -> EtcdError {
        EtcdError(.leaseNotFound, detail, endpoint: endpoint)
    }
    static func badResponse(_ endpoint: String, _ detail: String) -> EtcdError {
        EtcdError(.badResponse, "bad response: \(detail)", endpoint: endpoint)
    }
    static func watchCanceled(_ endpoint: String, _ detail: String) -> EtcdError {
        EtcdError(.watchCanceled, "watch canceled: \(detail)", endpoint: endpoint)
    }

    /// An error answer of the gateway, `{"error":…,"message":…,"code":N}`, sorted into a kind.
    static func gateway(_ endpoint: String, path: String, httpStatus: Int?, grpcCode: Int?, message: String) -> EtcdError {
        let code: Code
        if grpcCode == 5 && message.contains("lease not found") {
            code = .leaseNotFound
        } else if grpcCode == 11 && message.contains("compacted") {
            code = .compacted
        } else if message.contains("database space exceeded") {
            code = .noSpace
            return EtcdError(code, """
                \(path): \(message): etcd's database reached its space quota and raised the NOSPACE alarm; \
                it refuses writes until the history is compacted, the members defragmented and the alarm \
                disarmed (kiln etcd alarm disarm; docs/etcd-operations.md)
                """, endpoint: endpoint, httpStatus: httpStatus, grpcCode: grpcCode)
        } else {
            code = .rejected
        }
        return EtcdError(code, "\(path): \(message)", endpoint: endpoint, httpStatus: httpStatus, grpcCode: grpcCode)
    }

    /// Worth retrying: the connection failed, or etcd said it is unavailable for now
    /// (no leader yet, shutting down, request timed out). A request in flight when etcd stops
    /// gets HTTP 408 with gRPC code 1, "grpc: the client connection is closing".
    public var isTransient: Bool {
        switch code {
        case .unreachable:
            return true
        case .rejected:
            return [1, 4, 14].contains(grpcCode ?? 0) || [408, 502, 503, 504].contains(httpStatus ?? 0)
        default:
            return false
        }
    }
}
