import AsyncHTTPClient
import Foundation
import NIOCore

/// A failure of a Docker Engine API call: what was being done, the HTTP status (nil when the
/// failure came inside a streamed answer or before any answer) and the API's message.
public struct DockerError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let statusCode: Int?
    public let message: String

    /// The HTTP client gave up waiting (its read timeout).
    let isReadTimeout: Bool
    /// TLS refused the call: the handshake failed (a server certificate the CA given does not
    /// vouch for, a client certificate the server refused), or the TLS proxy in front of the
    /// engine refused the client certificate. Nothing reached the engine.
    public let isTLSFailure: Bool

    public init(_ operation: String, _ statusCode: Int?, _ message: String) {
        self.init(operation, statusCode, message, isReadTimeout: false)
    }

    init(_ operation: String, _ statusCode: Int?, _ message: String, isReadTimeout: Bool = false, isTLSFailure: Bool = false) {
        self.operation = operation
        self.statusCode = statusCode
        self.message = message
        self.isReadTimeout = isReadTimeout
        self.isTLSFailure = isTLSFailure
    }

    static func transport(_ operation: String, _ status: Int?, _ what: String, _ error: any Error) -> DockerError {
        if let error = error as? HTTPClientError, error == .readTimeout {
            return DockerError(
                operation, status,
                "no answer within the HTTP client's read timeout (give DockerClient a client without one, e.g. DockerClient.httpClient)",
                isReadTimeout: true)
        }
        return DockerError(operation, status, "\(what): \(error)")
    }

    /// The container or image does not exist.
    public var isNotFound: Bool { statusCode == 404 }

    public var description: String {
        if let statusCode { return "\(operation): HTTP \(statusCode): \(message)" }
        return "\(operation): \(message)"
    }
}
