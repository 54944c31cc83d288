@testable import BuildAgent
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// The log's cap and its chunks: the pure rules, then the reporter writing to a real etcd.
@Suite("Build log: cap and chunk size")
struct LogLimitsTests {
    @Test("a line is cut into pieces of at most 64 KiB, at character boundaries, losing nothing")
    func pieces() {
        #expect(LogChunks.pieces(of: "short") == ["short"])
        #expect(LogChunks.pieces(of: "") == [""])
        let long = String(repeating: "é", count: 100_000)  // 2 bytes each: 200,000 bytes
        let cut = LogChunks.pieces(of: long)
        #expect(cut.count == 4)
        #expect(cut.allSatisfy { $0.utf8.count <= LogChunks.maxPiece })
        #expect(cut.joined() == long, "a character was split or lost")
    }

    @Test("chunks stay within the budget even for lines that JSON escapes six-fold")
    func chunkBudget() throws {
        let escaped = String(repeating: "\u{1}", count: 40_000)
        let lines = Array(repeating: escaped, count: 20) + Array(repeating: "plain line", count: 1000)
        let chunks = LogChunks.group(lines)
        #expect(chunks.flatMap { $0 } == lines)
        for chunk in chunks {
            let json = try KilnJSON.encode(LogChunk(seq: 99_999_998, lines: chunk, end: true))
            #expect(json.utf8.count <= LogChunks.budget + 64, "a chunk of \(json.utf8.count) bytes")
        }
        #expect(LogChunks.group([]).isEmpty)
    }

    @Test("the cap keeps output up to the limit, then one note; the agent's lines always pass; the summary counts what was dropped")
    func cap() {
        var cap = LogCap(limit: 100)
        #expect(cap.output(String(repeating: "a", count: 49)) == [String(repeating: "a", count: 49)])  // 50 bytes kept
        #expect(cap.output(String(repeating: "b", count: 49)).count == 1)  // 100: exactly at the cap
        #expect(cap.summary == nil)
        let cut = cap.output("c")
        #expect(cut.count == 1 && cut[0].contains("the log is cut here") && cut[0].contains("100 bytes"), "\(cut)")
        #expect(cap.output("d").isEmpty)
        #expect(cap.output("e").isEmpty)
        #expect(cap.agent("==> compile failed") == ["==> compile failed"])
        #expect(cap.summary == "kiln: 6 bytes of output (3 lines) past the log's cap of 100 bytes were dropped")
        #expect(LogCap.describe(64 << 20) == "64 MiB" && LogCap.describe(1536 << 10) == "1.5 MiB" && LogCap.describe(2048) == "2 KiB")
    }

    @Test("--max-log-size values", arguments: [("1048576", 1 << 20), ("64M", 64 << 20), ("64MiB", 64 << 20), ("512k", 512 << 10), ("1G", 1 << 30), ("2KB", 2048), ("100B", 100)])
    func sizes(text: String, bytes: Int) {
        #expect(AgentConfiguration.parseSize(text) == bytes)
    }

    @Test("bad --max-log-size values are refused", arguments: ["", "M", "-1", "1.5M", "12Q", "99999999999999999999", "9999999999999G", "1 M"])
    func badSizes(text: String) {
        #expect(AgentConfiguration.parseSize(text) == nil)
    }

    /// A reporter for a task put by hand, so its guarded writes go through.
    func reporter(_ etcd: EtcdClient, maxLogBytes: Int) async throws -> (BuildReporter, Keys) {
        let keys = Keys()
        let taskKey = keys.task(agent: "a1", build: "b1")
        _ = try await etcd.put(taskKey, "{}")
        let rev = try #require(try await etcd.get(taskKey)).createRevision
        return (BuildReporter(etcd: etcd, keys: keys, buildID: "b1", taskKey: taskKey, taskCreateRevision: rev, attempt: 1, maxLogBytes: maxLogBytes), keys)
    }

    @Test("a 3 MiB line without a newline reaches etcd whole, in several chunks each far below etcd's limit")
    func longLine() async throws {
        try await withEtcd { _, etcd in
            let (reporter, keys) = try await reporter(etcd, maxLogBytes: 64 << 20)
            let line = String(repeating: "x", count: 3 << 20)
            reporter.output(line)
            try await reporter.flush(end: true)
            let kvs = try await etcd.range(prefix: keys.logs(of: "b1")).kvs
            #expect(kvs.count >= 12, "\(kvs.count) chunks")
            #expect(kvs.allSatisfy { $0.value.count < 512 << 10 }, "largest chunk: \(kvs.map(\.value.count).max() ?? 0) bytes")
            let chunks = try kvs.map { try KilnJSON.decode(LogChunk.self, from: $0.value) }
            #expect(chunks.map(\.seq) == Array(0..<chunks.count))
            #expect(chunks.flatMap(\.lines).joined() == line)
            #expect(chunks.last?.end == true && chunks.dropLast().allSatisfy { $0.end == nil })
        }
    }

    @Test("past a 1 MiB cap the log says where it was cut and how much was dropped; etcd holds little more than the cap")
    func capInEtcd() async throws {
        try await withEtcd { _, etcd in
            let (reporter, keys) = try await reporter(etcd, maxLogBytes: 1 << 20)
            reporter.log("==> compile started")
            for i in 0..<400_000 { reporter.output("output line \(i)") }  // about 6.7 MiB
            reporter.log("==> compile failed: the build command exited with status 5")
            var build = Build(id: "b1", project: "p", ref: "main")
            build.start(agent: "a1", attempt: 1, at: Date())
            build.end(.failed, error: "compile: status 5", at: Date())
            try await reporter.finish(build)
            let kvs = try await etcd.range(prefix: keys.logs(of: "b1")).kvs
            let stored = kvs.reduce(0) { $0 + $1.value.count }
            #expect(stored < (1 << 20) + (200 << 10), "etcd holds \(stored) bytes of log")
            let lines = try kvs.flatMap { try KilnJSON.decode(LogChunk.self, from: $0.value).lines }
            #expect(lines.first == "==> compile started")
            #expect(lines.filter { $0.contains("the log is cut here") }.count == 1)
            #expect(lines.contains("output line 0"))
            #expect(!lines.contains("output line 399999"))
            #expect(lines.suffix(2).first == "==> compile failed: the build command exited with status 5")
            #expect(lines.last?.hasPrefix("kiln: ") == true && lines.last?.contains("lines) past the log's cap of 1 MiB were dropped") == true, "\(lines.last ?? "")")
            #expect(try KilnJSON.decode(LogChunk.self, from: kvs.last!.value).end == true)
            #expect(try await etcd.get(keys.build("b1")).map { try KilnJSON.decode(Build.self, from: $0.value).status } == .failed)
        }
    }
}
