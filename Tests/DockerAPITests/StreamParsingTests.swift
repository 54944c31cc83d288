@testable import DockerAPI
import Foundation
import KilnTestSupport
import Testing

@Suite("Docker stream parsing and build contexts")
struct StreamParsingTests {
    static func frame(_ stream: UInt8, _ text: String) -> [UInt8] {
        let payload = Array(text.utf8)
        let n = UInt32(payload.count)
        return [stream, 0, 0, 0, UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + payload
    }

    @Test("multiplexed log frames become whole lines per stream, whatever the chunking")
    func demultiplex() {
        let bytes = Self.frame(1, "out1\nou") + Self.frame(2, "err1\n") + Self.frame(1, "t2\r\nlast") + Self.frame(2, "tail")
        for chunkSize in [1, 3, 7, 8, 9, 1000] {
            var demuxer = LogDemuxer()
            var lines: [String] = []
            var i = 0
            while i < bytes.count {
                lines += demuxer.feed(bytes[i..<min(i + chunkSize, bytes.count)])
                i += chunkSize
            }
            lines += demuxer.finish()
            #expect(lines == ["out1", "err1", "out2", "last", "tail"], "chunk size \(chunkSize)")
        }
    }

    @Test("a TTY stream (no frame headers) is split into lines as is")
    func rawStream() {
        var demuxer = LogDemuxer()
        var lines = demuxer.feed(Array("hello world\nsecond".utf8))
        lines += demuxer.finish()
        #expect(lines == ["hello world", "second"])
    }

    @Test("JSON messages are found across chunk borders, with or without separators, braces inside strings")
    func jsonSplitter() throws {
        let text = #"{"stream":"a {b} \"c\"\n"}"# + "\r\n" + #"{"aux":{"ID":"sha256:1"}}{"error":"x"}"# + "\n"
        let bytes = Array(text.utf8)
        for chunkSize in [1, 2, 5, 17, 1000] {
            var splitter = JSONStreamSplitter()
            var values: [String] = []
            var i = 0
            while i < bytes.count {
                values += splitter.feed(bytes[i..<min(i + chunkSize, bytes.count)]).map { String(decoding: $0, as: UTF8.self) }
                i += chunkSize
            }
            #expect(values == [#"{"stream":"a {b} \"c\"\n"}"#, #"{"aux":{"ID":"sha256:1"}}"#, #"{"error":"x"}"#])
        }
        let message = try JSONDecoder().decode(StreamMessage.self, from: Data(#"{"aux":{"ID":"sha256:1"}}"#.utf8))
        #expect(message.aux?.ID == "sha256:1")
        let odd = try JSONDecoder().decode(StreamMessage.self, from: Data(#"{"id":"moby.buildkit.trace","aux":"AAAA"}"#.utf8))
        #expect(odd.aux == nil)
    }

    @Test("the digest is read from podman's and dockerd's push status lines")
    func digestInStatus() {
        let hex = String(repeating: "ab", count: 32)
        #expect(DockerClient.digest(in: "1: digest: sha256:\(hex) size: 735") == "sha256:\(hex)")
        #expect(DockerClient.digest(in: "latest: digest: sha256:\(hex) size: 527") == "sha256:\(hex)")
        #expect(DockerClient.digest(in: "Pushing") == nil)
        #expect(DockerClient.digest(in: "digest: sha256:abc") == nil)
    }

    @Test(".dockerignore rules follow Docker's meaning")
    func dockerignore() {
        let ignore = DockerIgnore(contents: """
            # build output
            target
            /secrets/
            *.log
            **/*.tmp
            docs/**/draft-?.md
            !target/app.jar
            [abc].bin
            """)
        #expect(ignore.isExcluded("target"))
        #expect(ignore.isExcluded("target/classes/A.class"))
        #expect(!ignore.isExcluded("target/app.jar"))
        #expect(ignore.isExcluded("secrets/key.pem"))
        #expect(ignore.isExcluded("build.log"))
        #expect(!ignore.isExcluded("logs/build.log"))  // * stays within one folder
        #expect(ignore.isExcluded("a/b/c/x.tmp"))
        #expect(ignore.isExcluded("x.tmp"))
        #expect(ignore.isExcluded("docs/draft-1.md"))
        #expect(ignore.isExcluded("docs/a/b/draft-2.md"))
        #expect(!ignore.isExcluded("docs/a/draft-10.md"))
        #expect(ignore.isExcluded("b.bin"))
        #expect(!ignore.isExcluded("d.bin"))
        #expect(!ignore.isExcluded("src/main/App.java"))
        #expect(ignore.hasExceptions)
        #expect(DockerIgnore(contents: "").isExcluded("anything") == false)
    }

    @Test("a context archive holds long names, symlinks and modes, honours .dockerignore, and GNU tar reads it back")
    func tarRoundTrip() throws {
        let dir = try TempDir("tar")
        let context = dir.path("context")
        let long = String(repeating: "d", count: 120)
        let files: [String: String] = [
            "Dockerfile": "FROM scratch\n", ".dockerignore": "target\n!target/app.jar\nsecret.txt\nDockerfile\n",
            "src/App.java": "class App {}\n", "\(long)/\(long).txt": "long\n", "target/app.jar": "jar\n",
            "target/classes/App.class": "class\n", "secret.txt": "no\n",
        ]
        for (path, text) in files {
            let url = context.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o750], ofItemAtPath: context.appendingPathComponent("src/App.java").path)
        try FileManager.default.createSymbolicLink(atPath: context.appendingPathComponent("link").path, withDestinationPath: "src/App.java")
        let farTarget = "/opt/" + String(repeating: "t", count: 150)
        try FileManager.default.createSymbolicLink(atPath: context.appendingPathComponent("far").path, withDestinationPath: farTarget)
        let big = Data((0..<3_000_001).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try big.write(to: context.appendingPathComponent("big.bin"))

        let archive = dir.path("context.tar")
        try Tar.archive(directory: context, to: archive, ignore: try DockerIgnore(contextDirectory: context), keep: ["Dockerfile", ".dockerignore"])
        let out = dir.path("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try run("tar", ["-xf", archive.path, "-C", out.path])

        let fm = FileManager.default
        #expect(fm.fileExists(atPath: out.appendingPathComponent("Dockerfile").path))  // excluded, but always sent
        #expect(try String(contentsOf: out.appendingPathComponent("\(long)/\(long).txt"), encoding: .utf8) == "long\n")
        #expect(fm.fileExists(atPath: out.appendingPathComponent("target/app.jar").path))
        #expect(!fm.fileExists(atPath: out.appendingPathComponent("target/classes").path))
        #expect(!fm.fileExists(atPath: out.appendingPathComponent("secret.txt").path))
        #expect(try fm.destinationOfSymbolicLink(atPath: out.appendingPathComponent("link").path) == "src/App.java")
        #expect(try fm.destinationOfSymbolicLink(atPath: out.appendingPathComponent("far").path) == farTarget)
        #expect(try Data(contentsOf: out.appendingPathComponent("big.bin")) == big)
        let mode = try fm.attributesOfItem(atPath: out.appendingPathComponent("src/App.java").path)[.posixPermissions] as? Int
        #expect(mode == 0o750)
        let listing = try run("tar", ["-tvf", archive.path])
        #expect(listing.contains("root/root"))
    }

    @Test("a build context can carry a replacement for one file (the Dockerfile the sandbox pinned); one that is not there fails")
    func replacedFile() throws {
        let dir = try TempDir("replace")
        try "FROM busybox:1\n".write(to: dir.path("sub/Dockerfile").creatingParent(), atomically: true, encoding: .utf8)
        try "data\n".write(to: dir.path("other"), atomically: true, encoding: .utf8)
        let out = try TempDir("replace-out")
        let archive = out.path("context.tar")
        try Tar.archive(directory: dir.url, to: archive, replacing: ["sub/Dockerfile": Array("FROM abc\n".utf8)])
        let listed = try run("tar", ["-xOf", archive.path, "sub/Dockerfile"])
        #expect(listed == "FROM abc")
        #expect(throws: TarError.self) {
            try Tar.archive(directory: dir.path("sub"), to: archive, replacing: ["./Dockerfile": Array("FROM abc\n".utf8)])
        }
    }

    @Test("an image's configuration is read out of its export: the file manifest.json names, if it is the image's")
    func exportEntries() throws {
        let hex = String(repeating: "cd", count: 32)
        let config = #"{"config":{"OnBuild":["RUN echo ok"]}}"#
        let layer = [UInt8](repeating: 7, count: 3000)
        var tar: [UInt8] = []
        for (name, bytes) in [("\(hex.prefix(8)).tar", layer), ("\(hex).json", Array(config.utf8)), ("manifest.json", Array(#"[{"Config":"\#(hex).json"}]"#.utf8))] {
            var writer = TarWriter { tar += $0 }
            try writer.addFile(path: name, bytes: bytes, mode: 0o644, mtime: 0)
        }
        tar += [UInt8](repeating: 0, count: 1024)
        for chunkSize in [1, 100, 511, 512, 513, 100_000] {
            var entries = TarEntries(keepUpTo: 1 << 20) { $0 == "manifest.json" || $0.contains(hex) }
            var i = 0
            while i < tar.count {
                try entries.feed(tar[i..<min(i + chunkSize, tar.count)])
                i += chunkSize
            }
            #expect(Set(entries.kept.keys) == ["\(hex).json", "manifest.json"], "chunk size \(chunkSize)")
            #expect(entries.kept["\(hex).json"].map { String(decoding: $0, as: UTF8.self) } == config)
        }
        var broken = TarEntries(keepUpTo: 10) { _ in true }
        #expect(throws: TarError.self) { try broken.feed([UInt8](repeating: 65, count: 512)) }
    }
}
