/// The keys under a prefix as of one revision, kept up to date from what a watch or a follow
/// yields (``EtcdClient/follow(prefix:)``): a `.reset` replaces the view, events are applied
/// in order. A value: the owner decides how to share it.
public struct PrefixView: Sendable, Equatable {
    /// Key → its value as of `revision`.
    public private(set) var kvs: [String: KeyValue]
    /// Every change up to and including this revision is in the view; 0 before the first update.
    public private(set) var revision: Int64

    public init(_ kvs: [KeyValue] = [], revision: Int64 = 0) {
        self.kvs = Dictionary(kvs.map { ($0.key, $0) }, uniquingKeysWith: { _, last in last })
        self.revision = revision
    }

    public mutating func apply(_ update: WatchUpdate) {
        switch update {
        case .reset(let all, let revision):
            self = PrefixView(all, revision: revision)
        case .events(let events, let revision):
            for event in events {
                switch event.kind {
                case .put: kvs[event.kv.key] = event.kv
                case .delete: kvs[event.kv.key] = nil
                }
            }
            self.revision = revision
        }
    }

    /// The keys in etcd's order (by their bytes), as a range read returns them.
    public var sorted: [KeyValue] {
        kvs.values.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
    }
}
