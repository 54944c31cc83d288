import Etcd
import KilnCore

extension LogArchiver {
    /// The most keys one read of the walk returns (keys only: about 50 bytes each).
    static let walkPage = 1000

    /// Calls `found` with each build that has keys under `/kiln/logs/`, in key order, and
    /// returns how many; no value is read, and no build record.
    ///
    /// etcd 3.4 walks its index over the whole range of every read, whatever the limit
    /// (docs in `EtcdClient+Range.swift`), so stepping from one build to the next with reads
    /// to the prefix's end would cost the square of the keys: after an upgrade, a year of logs
    /// may still be in etcd. Instead a range of more than ``walkPage`` keys is split by the
    /// next character of the build id (ids are `[a-z0-9-]`; keys with any other character are
    /// not a build's and are passed by), and a range that is one build's prefix is that build,
    /// however many chunks it holds. Every key is walked once per character of id the split
    /// went down, so the whole walk costs the keys times a few.
    @discardableResult
    func buildsWithLogs(page limit: Int = walkPage, _ found: (String) -> Void) async throws -> Int {
        try await walk(keys.logs, limit: limit, found)
    }

    /// `prefix`: the logs' prefix and the start of a build id (or a whole one).
    private func walk(_ prefix: String, limit: Int, _ found: (String) -> Void) async throws -> Int {
        try Task.checkCancellation()
        let page = try await etcd.range(prefix: prefix, options: .init(limit: limit, keysOnly: true))
        guard page.more else {
            var count = 0, last: String?
            for kv in page.kvs {
                guard let (build, _) = LogNames.split(kv.key, under: keys.logs), build != last, BuildID.isValid(build) else { continue }
                last = build
                found(build)
                count += 1
            }
            return count
        }
        let id = String(prefix.dropFirst(keys.logs.count))
        if id.hasSuffix("/") {
            // One build's chunks, more than a page of them.
            let build = String(id.dropLast())
            guard BuildID.isValid(build) else { return 0 }
            found(build)
            return 1
        }
        guard id.count < 64 else { return 0 }  // longer than any build id: not a build's keys
        var count = 0
        // In key order: '-' < '/' < digits < letters. A build whose id is `id` has its
        // chunks under `id/`; longer ids go on with another character.
        for next in Self.idCharacters where !(id.isEmpty && next == "/") {
            count += try await walk(prefix + String(next), limit: limit, found)
        }
        return count
    }

    static let idCharacters: [Character] = ["-", "/"] + Array("0123456789abcdefghijklmnopqrstuvwxyz")
}
