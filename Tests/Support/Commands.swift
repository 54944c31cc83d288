import Foundation
import Processes
import Synchronization

public struct CommandFailed: Error, CustomStringConvertible {
    public let description: String
}

/// Runs a command and returns its output, throwing when it exits non-zero.
@discardableResult
public func run(_ program: String, _ arguments: [String], environment: [String: String]? = nil) throws -> String {
    let (status, output) = try ManagedProcess.run(program, arguments, environment: environment)
    guard status == 0 else {
        throw CommandFailed(description: "\(program) \(arguments.joined(separator: " ")) exited \(status): \(output)")
    }
    return output.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Collects lines handed to an `onLine` callback.
public final class Lines: Sendable {
    private let lines = Mutex<[String]>([])
    public init() {}
    public func append(_ line: String) { lines.withLock { $0.append(line) } }
    public var all: [String] { lines.withLock { $0 } }
}
