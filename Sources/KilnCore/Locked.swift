import Synchronization

/// A value behind a lock that tasks can share (a `Mutex` itself cannot be captured by the
/// closures of a task group).
public final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    public init(_ value: Value) { mutex = Mutex(value) }
    public var value: Value {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
    public func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}

extension Locked where Value == Int {
    /// Adds `n` and returns the value before.
    @discardableResult
    public func add(_ n: Int) -> Int { withLock { v in defer { v += n }; return v } }
}
