import Etcd
import KilnCore

extension LogArchiver {
    /// The most keys one read of the walk returns (keys only: about 50 bytes each).
    static let walkPage = 1000

    /// Calls `found` with each build that has keys under `/kiln/logs/`, in key order, and
    /// returns how many; no value is read, and no build record.
    ///
    /// etcd 3.4 walks its index over the whole range of every read, whatever the limit
    /// (`EtcdClient+Range.swift`), so stepping from one build to the next with reads to the
    /// prefix's end would cost the square of the keys: after an upgrade, a year of logs may
    /// still be in etcd. So no read goes past the range of the build-id start it is about:
    /// a page of `limit` keys that is not the whole of its range is taken apart by the next
    /// character of the id. Groups the page holds whole are read from it; the last group may
    /// go on past the page, and is walked on its own (a group that is one build's prefix is
    /// that build, however many chunks it holds); then the walk goes on after it. Keys with a
    /// character no build id has are passed by.
    @discardableResult
    func buildsWithLogs(page limit: Int = walkPage, _ found: (String) -> Void) async throws -> Int {
        var last: String?
        return try await walk(keys.logs, limit: limit) { build in
            guard build != last else { return false }
            last = build
            found(build)
            return true
        }
    }

    /// `prefix`: the logs' prefix and the start of a build id (or a whole one, and `/`).
    /// `found` says whether the build was new (a build's chunks may span two pages).
    private func walk(_ prefix: String, limit: Int, _ found: (String) -> Bool) async throws -> Int {
        let id = String(prefix.dropFirst(keys.logs.count))
        let end = EtcdClient.prefixEnd(prefix)
        var from = prefix
        var count = 0
        func take(_ kvs: some Sequence<KeyValue>) {
            for kv in kvs {
                if let (build, _) = LogNames.split(kv.key, under: keys.logs), BuildID.isValid(build), found(build) { count += 1 }
            }
        }
        while true {
            try Task.checkCancellation()
            let page = try await etcd.range(key: from, rangeEnd: end, options: .init(limit: limit, keysOnly: true))
            guard page.more, let lastKey = page.kvs.last?.key else {
                take(page.kvs)
                return count
            }
            if id.hasSuffix("/") {
                // One build's chunks, more than a page of them.
                take(page.kvs.prefix(1))
                return count
            }
            // The character after `prefix` of the page's last key: every group before it is whole here.
            guard id.count < 64, let next = lastKey.dropFirst(prefix.count).unicodeScalars.first, next.isASCII else {
                // Past every id character: all that follows is not a build's.
                take(page.kvs)
                return count
            }
            let group = prefix + String(next)
            take(page.kvs.prefix { !$0.key.hasPrefix(group) })
            if Self.idCharacters.contains(Character(next)) {
                count += try await walk(group, limit: limit, found)
            }
            from = EtcdClient.prefixEnd(group)
            if !from.utf8.lexicographicallyPrecedes(end.utf8) { return count }
        }
    }

    static let idCharacters: Set<Character> = Set("-/0123456789abcdefghijklmnopqrstuvwxyz")
}
