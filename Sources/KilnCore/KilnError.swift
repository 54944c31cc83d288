/// An error Kiln reports to a person: what went wrong and, where it can, what to do.
///
/// A struct over a private code so that cases can be added without breaking callers.
/// `httpStatus` is decided where the error is made; the API answers with it.
public struct KilnError: Error, CustomStringConvertible, Sendable, Equatable {
    private enum Code: Sendable, Equatable { case invalid, unauthorized, forbidden, notFound, conflict, tooManyRequests, unavailable, internalError }
    private let code: Code
    public let message: String

    private init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Bad input: HTTP 400.
    public static func invalid(_ message: String) -> KilnError { KilnError(.invalid, message) }
    /// No credentials, or wrong ones: HTTP 401.
    public static func unauthorized(_ message: String) -> KilnError { KilnError(.unauthorized, message) }
    /// Known caller, not allowed to do this: HTTP 403.
    public static func forbidden(_ message: String) -> KilnError { KilnError(.forbidden, message) }
    /// Unknown project, build or agent: HTTP 404.
    public static func notFound(_ message: String) -> KilnError { KilnError(.notFound, message) }
    /// The request clashes with the current state (already exists, already finished): HTTP 409.
    public static func conflict(_ message: String) -> KilnError { KilnError(.conflict, message) }
    /// Too many attempts (failed logins): HTTP 429; the message says when to try again.
    public static func tooManyRequests(_ message: String) -> KilnError { KilnError(.tooManyRequests, message) }
    /// A component Kiln needs (etcd, the container API, the registry) cannot be reached: HTTP 503.
    public static func unavailable(_ message: String) -> KilnError { KilnError(.unavailable, message) }
    public static func internalError(_ message: String) -> KilnError { KilnError(.internalError, message) }

    public var httpStatus: Int {
        switch code {
        case .invalid: 400
        case .unauthorized: 401
        case .forbidden: 403
        case .notFound: 404
        case .conflict: 409
        case .tooManyRequests: 429
        case .unavailable: 503
        case .internalError: 500
        }
    }

    public var isNotFound: Bool { code == .notFound }
    public var isInvalid: Bool { code == .invalid }
    public var description: String { message }
}
