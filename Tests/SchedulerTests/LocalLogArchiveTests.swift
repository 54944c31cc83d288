import Foundation
import KilnCore
import KilnTestSupport
@testable import Scheduler
import Testing

/// The folder-backed log archive on this machine's disk.
@Suite("Local log archive")
struct LocalLogArchiveTests {
    static let awkward = ["", "plain", "  indented\t", "a line\nwith a newline", "carriage\r", "ünïcødé ✓ 日本", "\"quoted\" \\ back", "\u{1B}[31mred\u{1B}[0m", String(repeating: "x", count: 70_000)]

    @Test("stores and reads every line exactly, replaces a stored log whole, deletes it; a build without one reads nil")
    func roundTrip() async throws {
        let dir = try TempDir("log-archive")
        let archive = LocalLogArchive(directory: dir.path("archive"))
        let id = BuildID.generate()
        #expect(try await archive.read(build: id) == nil)
        try await archive.store(build: id, lines: Self.awkward)
        #expect(try await archive.read(build: id) == Self.awkward)
        try await archive.store(build: id, lines: Self.awkward + ["after the pipeline run"])
        #expect(try await archive.read(build: id) == Self.awkward + ["after the pipeline run"])
        try await archive.store(build: id, lines: [])
        #expect(try await archive.read(build: id) == [])

        // Where it is, and with which modes: only the scheduler's user reads logs.
        let file = try archive.file(of: id)
        #expect(file.folder.lastPathComponent == String(id.prefix(7)) && file.file.lastPathComponent == "\(id).json.gz")
        let attributes = try FileManager.default.attributesOfItem(atPath: file.file.path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect((try FileManager.default.attributesOfItem(atPath: file.folder.path)[.posixPermissions] as? Int) == 0o700)
        // No temporary file is left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: file.folder.path) == ["\(id).json.gz"])
        // zcat reads it: a gzip file of JSON.
        let raw = try Gzip.decompress(Array(try Data(contentsOf: file.file)), limit: 1 << 30)
        #expect(String(decoding: raw, as: UTF8.self).hasPrefix("{"))

        try await archive.delete(build: id)
        #expect(try await archive.read(build: id) == nil)
        #expect(!FileManager.default.fileExists(atPath: file.folder.path), "the empty folder goes with its last file")
        try await archive.delete(build: id)  // none: not an error
    }

    @Test("unfinished writes older than the age are removed; a fresh one (a writer at work) and the archives stay")
    func leftoversOfAKilledWriterAreRemoved() async throws {
        let dir = try TempDir("log-archive")
        let archive = LocalLogArchive(directory: dir.path("archive"))
        let id = BuildID.generate()
        try await archive.store(build: id, lines: ["kept"])
        let folder = try archive.file(of: id).folder
        let old = folder.appendingPathComponent(".\(id).json.gz.\(UUID().uuidString).tmp")
        let fresh = folder.appendingPathComponent(".\(id).json.gz.\(UUID().uuidString).tmp")
        for file in [old, fresh] { try Data("half".utf8).write(to: file) }
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-7200)], ofItemAtPath: old.path)
        #expect(await archive.removeLeftovers(olderThan: 3600) == 1)
        #expect(!FileManager.default.fileExists(atPath: old.path))
        #expect(FileManager.default.fileExists(atPath: fresh.path))
        #expect(try await archive.read(build: id) == ["kept"])
    }

    @Test("a build id is checked before it becomes a file name")
    func hostileIDs() async throws {
        let dir = try TempDir("log-archive")
        let archive = LocalLogArchive(directory: dir.path("archive"))
        for id in ["", "../../etc/passwd", "..", ".", "a/b", "B0ABC", "b0/../../x", "b0\0x", "b 0", String(repeating: "b", count: 65), "~root", "b0%2e%2e"] {
            await #expect(throws: KilnError.self, "\(id)") { try await archive.store(build: id, lines: ["x"]) }
            await #expect(throws: KilnError.self, "\(id)") { try await archive.read(build: id) }
            await #expect(throws: KilnError.self, "\(id)") { try await archive.delete(build: id) }
        }
        // Nothing was written anywhere: not even the archive's folder was made.
        #expect(!FileManager.default.fileExists(atPath: dir.path("archive").path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.url.path).isEmpty)
    }

    @Test("a corrupt, cut, foreign or swapped file is refused with what to do, never shown in part")
    func corruptFiles() async throws {
        let dir = try TempDir("log-archive")
        let archive = LocalLogArchive(directory: dir.path("archive"))
        let id = BuildID.generate(), other = BuildID.generate()
        try await archive.store(build: id, lines: Self.awkward)
        try await archive.store(build: other, lines: ["another build's line"])
        let file = try archive.file(of: id).file, otherFile = try archive.file(of: other).file
        let good = try Data(contentsOf: file)

        func expectRefused(_ bytes: Data, saying words: [String], _ what: String) async throws {
            try bytes.write(to: file)
            do {
                let lines = try await archive.read(build: id)
                Issue.record("\(what): read \(lines?.count ?? -1) lines instead of refusing")
            } catch let error as KilnError {
                #expect(error.httpStatus == 500, "\(what): \(error)")
                for w in words { #expect(error.message.contains(w), "\(what): \(error.message)") }
            }
        }
        try await expectRefused(good.prefix(good.count / 2), saying: ["corrupt", file.path, "backup"], "a file cut in half")
        var flipped = good
        flipped[flipped.count / 2] ^= 0x55
        try await expectRefused(flipped, saying: ["corrupt"], "a flipped byte")
        try await expectRefused(Data("just text".utf8), saying: ["corrupt"], "not gzip")
        try await expectRefused(Data(), saying: ["corrupt"], "an empty file")
        try await expectRefused(Data(try Gzip.compress(Array("[\"a\",\"b\"]".utf8))), saying: ["corrupt"], "gzip of other JSON")
        try await expectRefused(try Data(contentsOf: otherFile), saying: ["build \(other)", "copied"], "another build's file copied over it")
        let future = try KilnJSON.encode(LocalLogArchive.File(format: 2, build: id, lines: ["x"]))
        try await expectRefused(Data(try Gzip.compress(Array(future.utf8))), saying: ["format 2"], "a format this scheduler does not know")
        // Restored from the backup: read whole again.
        try good.write(to: file)
        #expect(try await archive.read(build: id) == Self.awkward)
    }

    @Test("a folder that cannot be written fails the store with the path and what to check; it works once the folder is back")
    func unwritable() async throws {
        let dir = try TempDir("log-archive")
        let path = dir.path("archive")
        // A file where the folder should be: every store fails, as with a disk gone read-only
        // (as root, file modes would not stop this process).
        try Data("not a folder".utf8).write(to: path)
        let archive = LocalLogArchive(directory: path)
        let id = BuildID.generate()
        do {
            try await archive.store(build: id, lines: ["x"])
            Issue.record("stored into a file")
        } catch let error as KilnError {
            #expect(error.httpStatus == 503 && error.message.contains(path.path) && error.message.contains("--log-archive"), "\(error)")
        }
        try FileManager.default.removeItem(at: path)
        try await archive.store(build: id, lines: ["x"])
        #expect(try await archive.read(build: id) == ["x"])
    }

    @Test("schedulers sharing the folder: a reader sees one whole version at every moment while two writers replace it")
    func sharedFolder() async throws {
        let dir = try TempDir("log-archive")
        // Two schedulers' archives on one folder.
        let a = LocalLogArchive(directory: dir.path("archive")), b = LocalLogArchive(directory: dir.url.appendingPathComponent("x/../archive"))
        let id = BuildID.generate()
        let versions = (1...20).map { n in (0..<(n * 500)).map { "version \(n) line \($0)" } }
        try await a.store(build: id, lines: versions[0])
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (writer, archive) in [(0, a), (1, b)] {
                group.addTask { for v in versions where v.count / 500 % 2 == writer { try await archive.store(build: id, lines: v) } }
            }
            group.addTask {
                for _ in 0..<200 {
                    let lines = try #require(try await b.read(build: id))
                    #expect(versions.contains(lines), "a read saw \(lines.count) lines that no writer stored")
                }
            }
            try await group.waitForAll()
        }
        let folder = try a.file(of: id).folder
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["\(id).json.gz"], "temporary files left behind")
    }
}
