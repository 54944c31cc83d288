/// One key as etcd stores it.
public struct KeyValue: Sendable, Equatable, Hashable {
    public var key: String
    public var value: [UInt8]
    /// The revision that created the key (0 for a key in a DELETE event).
    public var createRevision: Int64
    /// The revision of the last change to the key.
    public var modRevision: Int64
    /// How many times the key was written since it was created.
    public var version: Int64
    /// The lease the key is bound to, 0 if none.
    public var lease: Int64

    public init(key: String, value: [UInt8], createRevision: Int64 = 0, modRevision: Int64 = 0, version: Int64 = 0, lease: Int64 = 0) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }

    /// The value as UTF-8 text (invalid bytes are replaced).
    public var string: String { String(decoding: value, as: UTF8.self) }
}

/// The keys of a range read, sorted by key, and the store's revision at the time of the read.
public struct RangeResult: Sendable, Equatable {
    public var kvs: [KeyValue]
    /// The store's revision the read saw.
    public var revision: Int64
    /// How many keys are in the range, ignoring `limit`.
    public var count: Int64
    /// Whether `limit` cut the result short.
    public var more: Bool

    public init(kvs: [KeyValue], revision: Int64, count: Int64, more: Bool = false) {
        self.kvs = kvs
        self.revision = revision
        self.count = count
        self.more = more
    }
}

/// A transaction: if every comparison holds, the `success` operations run, else `failure`'s;
/// all at one revision.
public struct Txn: Sendable {
    public var compare: [Compare]
    public var success: [TxnOp]
    public var failure: [TxnOp]

    public init(compare: [Compare] = [], success: [TxnOp] = [], failure: [TxnOp] = []) {
        self.compare = compare
        self.success = success
        self.failure = failure
    }
}

extension Txn {
    /// What the transaction touches, for a refusal's message: etcd wants read permission on
    /// every compared key and on every key read, write permission on every key written.
    var access: String {
        var read: [String] = [], written: [String] = []
        for c in compare where !read.contains(c.key) { read.append(c.key) }
        for op in success + failure {
            switch op {
            case .put(let key, _, _), .putBytes(let key, _, _), .delete(let key):
                if !written.contains(key) { written.append(key) }
            case .deletePrefix(let prefix):
                if !written.contains(prefix + "…") { written.append(prefix + "…") }
            case .get(let key):
                if !read.contains(key) { read.append(key) }
            case .getPrefix(let prefix):
                if !read.contains(prefix + "…") { read.append(prefix + "…") }
            }
        }
        var parts: [String] = []
        if !read.isEmpty { parts.append("read " + read.joined(separator: ", ")) }
        if !written.isEmpty { parts.append("write " + written.joined(separator: ", ")) }
        return "run a transaction that needs to " + parts.joined(separator: " and ")
    }
}

/// How a comparison in a transaction relates the key's field to the given value.
public enum CompareResult: String, Sendable {
    case equal = "EQUAL"
    case notEqual = "NOT_EQUAL"
    case greater = "GREATER"
    case less = "LESS"
}

/// One comparison of a transaction. A key that does not exist has create revision, mod
/// revision and version 0: `.createRevision(key, .equal, 0)` is "the key is absent".
public struct Compare: Sendable {
    enum Target: Sendable {
        case createRevision(Int64)
        case modRevision(Int64)
        case version(Int64)
        case value([UInt8])
        case lease(Int64)
    }

    public var key: String
    public var result: CompareResult
    var target: Target

    public static func createRevision(_ key: String, _ result: CompareResult, _ revision: Int64) -> Compare {
        Compare(key: key, result: result, target: .createRevision(revision))
    }
    public static func modRevision(_ key: String, _ result: CompareResult, _ revision: Int64) -> Compare {
        Compare(key: key, result: result, target: .modRevision(revision))
    }
    public static func version(_ key: String, _ result: CompareResult, _ version: Int64) -> Compare {
        Compare(key: key, result: result, target: .version(version))
    }
    public static func value(_ key: String, _ result: CompareResult, _ value: String) -> Compare {
        Compare(key: key, result: result, target: .value(Array(value.utf8)))
    }
    public static func value(_ key: String, _ result: CompareResult, bytes: [UInt8]) -> Compare {
        Compare(key: key, result: result, target: .value(bytes))
    }
    public static func lease(_ key: String, _ result: CompareResult, _ lease: Int64) -> Compare {
        Compare(key: key, result: result, target: .lease(lease))
    }
}

/// One operation of a transaction.
public enum TxnOp: Sendable {
    case put(String, String, lease: Int64? = nil)
    case putBytes(String, [UInt8], lease: Int64? = nil)
    case delete(String)
    case deletePrefix(String)
    case get(String)
    case getPrefix(String)
}

/// The result of one operation of a transaction, in the order of the branch that ran.
public enum TxnOpResult: Sendable, Equatable {
    case put
    case delete(deleted: Int64)
    case get(kvs: [KeyValue], count: Int64)

    /// The keys a get read; empty for a put or delete.
    public var kvs: [KeyValue] {
        if case .get(let kvs, _) = self { return kvs }
        return []
    }
}

/// What a transaction did: which branch ran, at which revision, and each operation's result.
public struct TxnResult: Sendable {
    /// True if every comparison held and the `success` branch ran.
    public var succeeded: Bool
    /// The store's revision after the transaction (unchanged if it wrote nothing).
    public var revision: Int64
    public var responses: [TxnOpResult]

    public init(succeeded: Bool, revision: Int64, responses: [TxnOpResult]) {
        self.succeeded = succeeded
        self.revision = revision
        self.responses = responses
    }
}

/// One change seen by a watch.
public struct WatchEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case put
        case delete
    }

    public var kind: Kind
    /// For a put, the key as written. For a delete, the key with only `key` and `modRevision`
    /// (the delete's revision) set.
    public var kv: KeyValue
    /// The key before this change; only when the watch asked for it (`prevKV: true`), and
    /// absent for a put that created the key.
    public var prevKV: KeyValue?

    public init(kind: Kind, kv: KeyValue, prevKV: KeyValue? = nil) {
        self.kind = kind
        self.kv = kv
        self.prevKV = prevKV
    }
}

/// What a watch yields.
public enum WatchUpdate: Sendable, Equatable {
    /// Changes, in revision order. `revision` is the revision of the last event: every change in
    /// the watched range up to and including it has been delivered.
    case events([WatchEvent], revision: Int64)
    /// The whole content of the watched range at `revision`: rebuild your view from it.
    /// Events after `revision` follow. A follow starts with one; a watch yields one when it
    /// could not resume because its revision was compacted.
    case reset([KeyValue], revision: Int64)

    /// The revision up to which the watcher's view is complete.
    public var revision: Int64 {
        switch self {
        case .events(_, let revision), .reset(_, let revision): return revision
        }
    }
}
