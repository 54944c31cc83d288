@testable import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import Testing

@Suite("Where a project's caches live on the agent (CacheLayout)")
struct CacheLayoutTests {
    @Test("/root/.m2 is the project's cache folder itself, as before caches were declared")
    func mavenKeepsItsFolder() {
        #expect(CacheLayout.folder(of: "/root/.m2") == "")
    }

    @Test("other paths get flat folders under .kiln-caches, '/' and any other byte outside [A-Za-z0-9._-] written as %XX", arguments: [
        ("/root/.gradle", ".kiln-caches/root%2F.gradle"), ("/root/.npm", ".kiln-caches/root%2F.npm"),
        ("/var/cache/npm", ".kiln-caches/var%2Fcache%2Fnpm"), ("/root", ".kiln-caches/root"),
        ("/root/.m2x", ".kiln-caches/root%2F.m2x"), ("/home/u/.m2", ".kiln-caches/home%2Fu%2F.m2"),
    ])
    func folders(_ path: String, _ folder: String) {
        #expect(CacheLayout.folder(of: path) == folder)
    }

    @Test("paths the validation refuses get no folder at all", arguments: [
        "", "/", "root/.m2", "/root/../../../etc", "/..", "/.", "/root/./x", "/root//x", "/root/", "/workspace", "/workspace/x",
        "/proc/self", "/etc", "/root/%2F", "/root/a b", "/root/a\u{0}b", "/root/\u{2F}..", "/root/.m2/..",
    ])
    func refused(_ path: String) {
        #expect(CacheLayout.folder(of: path) == nil)
    }

    @Test("distinct paths never share a folder, never reach outside .kiln-caches and never are the Maven folder")
    func oneToOne() {
        // Pairs a naive mapping ('/' to '.', '_' or '-') would merge.
        let paths = ["/a/b.c", "/a.b/c", "/a/b_c", "/a_b/c", "/a/b-c", "/a-b/c", "/a2Fb", "/a/2Fb", "/root/.m2/x", "/root.m2", "/root/m2",
                     "/a%2Fb", "/.kiln-caches", "/x/.kiln-caches", "/root/.gradle", "/root/.gradle/caches"]
        var seen: [String: String] = [:]
        for p in paths {
            guard let f = CacheLayout.folder(of: p) else { continue }
            #expect(f != "", "\(p) took the Maven folder")
            #expect(f.hasPrefix(".kiln-caches/") && !f.dropFirst(".kiln-caches/".count).contains("/"), "\(p) → \(f)")
            #expect(f != ".kiln-caches/." && f != ".kiln-caches/..")
            if let other = seen[f] { Issue.record("\(p) and \(other) share \(f)") }
            seen[f] = p
        }
        #expect(seen.count == paths.count - 1)  // '/a%2Fb' is refused ('%')
    }

    @Test("a build mounts the project's caches in its order; none declared is Maven's; a list the scheduler would refuse mounts nothing")
    func mounts() throws {
        var p = Project(name: "tools", repository: "https://example.com/t.git", buildImage: "busybox", buildCommand: "true")
        #expect(try CacheLayout.mounts(of: p).map(\.path) == ["/root/.m2"])
        p.caches = []
        #expect(try CacheLayout.mounts(of: p).isEmpty)
        p.caches = ["/root/.gradle", "/root/.m2"]
        #expect(try CacheLayout.mounts(of: p).map { "\($0.path)=\($0.folder)" } == ["/root/.gradle=.kiln-caches/root%2F.gradle", "/root/.m2="])
        for bad in [["/root/.m2", "/root/.m2"], ["/root", "/root/.m2"], ["/root/.m2", "/etc/x"], (0...8).map { "/c\($0)" }] {
            p.caches = bad
            #expect(throws: KilnError.self) { try CacheLayout.mounts(of: p) }
        }
    }

    @Test("a link a build planted where a cache's folder goes is replaced by a plain folder; what it pointed to is untouched")
    func plantedLinksAreReplaced() throws {
        let dir = try TempDir("cache-layout")
        let fm = FileManager.default
        let root = dir.url.appendingPathComponent("mvncache/protected/p")
        let outside = dir.url.appendingPathComponent("outside")
        try fm.createDirectory(at: root, withIntermediateDirectories: true)
        try fm.createDirectory(at: outside, withIntermediateDirectories: true)
        try "keep".write(to: outside.appendingPathComponent("file"), atomically: true, encoding: .utf8)
        let gradle = try #require(CacheLayout.folder(of: "/root/.gradle"))
        #expect(try CacheLayout.prepare("", in: root) == root)

        // The folder itself a link.
        try fm.createDirectory(at: root.appendingPathComponent(".kiln-caches"), withIntermediateDirectories: true)
        try fm.createSymbolicLink(at: root.appendingPathComponent(gradle), withDestinationURL: outside)
        var made = try CacheLayout.prepare(gradle, in: root)
        #expect(made.path == root.appendingPathComponent(gradle).path)
        #expect(try fm.attributesOfItem(atPath: made.path)[.type] as? FileAttributeType == .typeDirectory)
        #expect(try fm.contentsOfDirectory(atPath: made.path).isEmpty)
        #expect(try fm.contentsOfDirectory(atPath: outside.path) == ["file"])

        // .kiln-caches a link, and a cache's folder a plain file.
        try fm.removeItem(at: root.appendingPathComponent(".kiln-caches"))
        try fm.createSymbolicLink(at: root.appendingPathComponent(".kiln-caches"), withDestinationURL: outside)
        made = try CacheLayout.prepare(gradle, in: root)
        #expect(try fm.attributesOfItem(atPath: root.appendingPathComponent(".kiln-caches").path)[.type] as? FileAttributeType == .typeDirectory)
        #expect(try fm.contentsOfDirectory(atPath: outside.path) == ["file"])
        try fm.removeItem(at: made)
        try "x".write(to: made, atomically: true, encoding: .utf8)
        made = try CacheLayout.prepare(gradle, in: root)
        #expect(try fm.attributesOfItem(atPath: made.path)[.type] as? FileAttributeType == .typeDirectory)
        // What a cache holds stays.
        try "jar".write(to: made.appendingPathComponent("dep.jar"), atomically: true, encoding: .utf8)
        #expect(try fm.contentsOfDirectory(atPath: try CacheLayout.prepare(gradle, in: root).path) == ["dep.jar"])
    }
}
