@testable import BuildAgent
import Foundation
import Glibc
import KilnCore
import KilnTestSupport
import Processes
import Testing

/// `CacheLayers` on the real kernel: overlay mounts as the agent makes them, in a folder of
/// this machine's disk (as root, as the agent runs).
@Suite("A project's caches change only when a build succeeds (CacheLayers)")
struct CacheLayersTests {
    let dir: TempDir
    let layers: CacheLayers
    let folder = "shared/demo"
    var base: URL { dir.url.appendingPathComponent("mvncache/shared/demo") }

    init() throws {
        dir = try TempDir("cache-layers")
        layers = CacheLayers(cachesDir: dir.url.appendingPathComponent("mvncache"))
        try FileManager.default.createDirectory(at: layers.layersDir, withIntermediateDirectories: true)
    }

    /// The files under `root` with their content ("→target" for a link, "/" for a folder).
    static func tree(_ root: URL) -> [String: String] {
        var out: [String: String] = [:]
        let fm = FileManager.default
        func walk(_ url: URL, _ rel: String) {
            for name in (try? fm.contentsOfDirectory(atPath: url.path)) ?? [] {
                let u = url.appendingPathComponent(name), r = rel.isEmpty ? name : "\(rel)/\(name)"
                switch CacheLayers.lstatType(u) {
                case .folder?: out[r] = "/"; walk(u, r)
                case .whiteout?: out[r] = "whiteout"
                default:
                    if let target = try? fm.destinationOfSymbolicLink(atPath: u.path) { out[r] = "→" + target }
                    else { out[r] = (try? String(contentsOf: u, encoding: .utf8)) ?? "?" }
                }
            }
        }
        walk(root, "")
        return out
    }

    func write(_ files: [String: String], in root: URL) throws {
        for (path, text) in files {
            let url = root.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: false, encoding: .utf8)
        }
    }

    /// A cache as a build found it: a repository of a few artifacts.
    func seed() throws {
        try write(["repository/a/1/a.jar": "a1", "repository/a/1/a.pom": "pom", "repository/b/2/b.jar": "b2", "settings": "s"], in: base)
    }

    /// What a build does to its caches through the overlay: adds, changes, deletes a file,
    /// and deletes a folder and makes it again with other content.
    func change(_ merged: URL) throws {
        try write(["repository/c/3/c.jar": "c3", "settings": "s2"], in: merged)
        try FileManager.default.removeItem(at: merged.appendingPathComponent("repository/a/1/a.pom"))
        try FileManager.default.removeItem(at: merged.appendingPathComponent("repository/b"))
        try write(["repository/b/9/b.jar": "b9"], in: merged)
    }

    static let changed: [String: String] = [
        "repository": "/", "repository/a": "/", "repository/a/1": "/", "repository/a/1/a.jar": "a1",
        "repository/b": "/", "repository/b/9": "/", "repository/b/9/b.jar": "b9",
        "repository/c": "/", "repository/c/3": "/", "repository/c/3/c.jar": "c3", "settings": "s2",
    ]

    @Test("a build that succeeds: the cache is what the build saw at its end, whiteouts and replaced folders included; no layer is left")
    func successIsKept() async throws {
        try seed()
        let s = try await layers.mount(folder: folder, name: "b1-1")
        #expect(Self.tree(s.merged)["repository/a/1/a.pom"] == "pom", "the overlay shows the cache")
        try change(s.merged)
        let seen = Self.tree(s.merged)
        #expect(seen == Self.changed)
        #expect(Self.tree(base)["settings"] == "s", "the base changed while the build ran")
        await layers.unmount(s)
        try await layers.commit(s)
        #expect(Self.tree(base) == Self.changed)
        #expect(!FileManager.default.fileExists(atPath: layers.layersDir.appendingPathComponent(folder).path), "the layers' state stayed: \(Self.tree(layers.layersDir))")
    }

    @Test("a build that fails, or is cancelled: the cache is exactly as it was")
    func failureIsDropped() async throws {
        try seed()
        let before = Self.tree(base)
        let s = try await layers.mount(folder: folder, name: "b1-1")
        try change(s.merged)
        try write(["repository/evil/plugin.jar": "planted"], in: s.merged)
        await layers.unmount(s)
        await layers.discard(s)
        #expect(Self.tree(base) == before)
        #expect(!FileManager.default.fileExists(atPath: s.dir.path))
        // The next build sees the cache as before.
        let next = try await layers.mount(folder: folder, name: "b2-1")
        #expect(Self.tree(next.merged) == before)
        await layers.unmount(next)
        await layers.discard(next)
    }

    @Test("two builds at once: each sees the cache as it was when it started; both successes are merged, the one that ended last winning per path")
    func concurrentSuccesses() async throws {
        try seed()
        let one = try await layers.mount(folder: folder, name: "one-1")
        let two = try await layers.mount(folder: folder, name: "two-1")
        try write(["repository/one/x.jar": "one", "settings": "from one"], in: one.merged)
        try write(["repository/two/y.jar": "two", "settings": "from two"], in: two.merged)
        #expect(Self.tree(two.merged)["repository/one"] == nil, "a build saw another's unfinished changes")
        // One ends first while two still runs: its changes wait as a layer; the base is untouched.
        await layers.unmount(one)
        try await layers.commit(one)
        #expect(Self.tree(base)["settings"] == "s")
        #expect(Self.tree(layers.layersDir.appendingPathComponent(folder))["layers/1/repository/one/x.jar"] == "one")
        // A third build starting now sees one's success.
        let three = try await layers.mount(folder: folder, name: "three-1")
        #expect(Self.tree(three.merged)["repository/one/x.jar"] == "one")
        await layers.unmount(three)
        await layers.discard(three)
        #expect(Self.tree(base)["settings"] == "s", "folded while a build's overlay was mounted")
        await layers.unmount(two)
        try await layers.commit(two)
        let cache = Self.tree(base)
        #expect(cache["repository/one/x.jar"] == "one" && cache["repository/two/y.jar"] == "two" && cache["repository/a/1/a.pom"] == "pom")
        #expect(cache["settings"] == "from two", "the last success wins")
        #expect(!FileManager.default.fileExists(atPath: layers.layersDir.appendingPathComponent(folder).path), "the layers' state stayed: \(Self.tree(layers.layersDir))")
    }

    @Test("an agent that died: its mounts go, the unfinished builds' changes are dropped, the successes' layers are folded, a layer the list does not name is dropped")
    func recoverAfterACrash() async throws {
        try seed()
        let done = try await layers.mount(folder: folder, name: "done-1")
        let running = try await layers.mount(folder: folder, name: "running-1")
        try write(["done.txt": "kept"], in: done.merged)
        try write(["running.txt": "dropped"], in: running.merged)
        await layers.unmount(done)
        try await layers.commit(done)  // a layer: `running` is still mounted
        // A success that died between its rename and the list's write.
        try write(["orphan.txt": "dropped"], in: layers.layersDir.appendingPathComponent("\(folder)/layers/7"))
        // The agent dies here: a new one starts over the same folder.
        let again = CacheLayers(cachesDir: layers.cachesDir)
        let notes = await again.recover()
        #expect(!CacheLayersTests.mounted(under: layers.layersDir), "a mount was left")
        let cache = Self.tree(base)
        #expect(cache["done.txt"] == "kept" && cache["running.txt"] == nil && cache["orphan.txt"] == nil, "\(cache)")
        #expect(!FileManager.default.fileExists(atPath: layers.layersDir.appendingPathComponent(folder).path), "the layers' state stayed: \(Self.tree(layers.layersDir))")
        #expect(notes.contains { $0.contains("running-1") }, "\(notes)")
    }

    @Test("a fold cut short (the agent died in it) is finished by the next one")
    func foldIsIdempotent() async throws {
        try seed()
        let s = try await layers.mount(folder: folder, name: "b-1")
        try change(s.merged)
        await layers.unmount(s)
        // Keep the layer listed but unfolded: commit with another overlay mounted.
        let other = try await layers.mount(folder: folder, name: "other-1")
        try await layers.commit(s)
        await layers.unmount(other)
        // Half a fold: a few entries applied by hand the way `apply` does, then a crash.
        let layer = layers.layersDir.appendingPathComponent("\(folder)/layers/1")
        #expect(rename(layer.appendingPathComponent("settings").path, base.appendingPathComponent("settings").path) == 0)
        try FileManager.default.removeItem(at: base.appendingPathComponent("repository/a/1/a.pom"))
        try FileManager.default.removeItem(at: layer.appendingPathComponent("repository/a/1/a.pom"))
        let notes = await CacheLayers(cachesDir: layers.cachesDir).recover()
        #expect(Self.tree(base) == Self.changed, "\(notes)")
        await layers.discard(other)
    }

    @Test("folding never follows a link: a link a build made replaces a folder of the cache, what it points to is untouched; a base that is a link is refused")
    func linksAreNotFollowed() async throws {
        try seed()
        let outside = try TempDir("cache-layers-outside")
        try write(["keep.txt": "host"], in: outside.url)
        let s = try await layers.mount(folder: folder, name: "b-1")
        try FileManager.default.removeItem(at: s.merged.appendingPathComponent("repository"))
        try FileManager.default.createSymbolicLink(atPath: s.merged.appendingPathComponent("repository").path, withDestinationPath: outside.url.path)
        await layers.unmount(s)
        try await layers.commit(s)
        #expect(Self.tree(base)["repository"] == "→" + outside.url.path)
        #expect(Self.tree(outside.url) == ["keep.txt": "host"])
        // The next build's overlay over it, then a change under the link's name: into its layer.
        let next = try await layers.mount(folder: folder, name: "c-1")
        try FileManager.default.removeItem(at: next.merged.appendingPathComponent("repository"))
        try write(["repository/new.jar": "n"], in: next.merged)
        await layers.unmount(next)
        try await layers.commit(next)
        #expect(Self.tree(base)["repository/new.jar"] == "n" && Self.tree(outside.url) == ["keep.txt": "host"])

        let linked = CacheLayers(cachesDir: try TempDir("cache-layers-linked").url)
        try FileManager.default.createDirectory(at: linked.cachesDir.appendingPathComponent("shared"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: linked.cachesDir.appendingPathComponent("shared/demo").path, withDestinationPath: outside.url.path)
        await #expect(throws: StepFailure.self) { _ = try await linked.mount(folder: "shared/demo", name: "x-1") }
    }

    @Test("the probe finds that this machine can mount overlays in the data dir; a data dir with ':' in its path is refused by name")
    func probe() throws {
        #expect(CacheLayers.probe(in: layers.layersDir) == nil)
        let colon = dir.url.appendingPathComponent("a:b")
        try FileManager.default.createDirectory(at: colon, withIntermediateDirectories: true)
        #expect(CacheLayers.probe(in: colon)?.contains("has a ',', ':' or '\\'") == true)
    }

    @Test("a symlinked data dir: the overlay is unmounted all the same, and the start finds what a dead run left mounted")
    func symlinkedDataDir() async throws {
        let link = dir.url.appendingPathComponent("link")
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: dir.url.path)
        let linked = CacheLayers(cachesDir: link.appendingPathComponent("mvncache"))
        try seed()
        let s = try await linked.mount(folder: folder, name: "b-1")
        try write(["new.txt": "n"], in: s.merged)
        await linked.unmount(s)
        #expect(!Self.mounted(under: layers.layersDir), "an overlay stayed mounted")
        try await linked.commit(s)
        #expect(Self.tree(base)["new.txt"] == "n")
        _ = try await linked.mount(folder: folder, name: "dead-1")  // the agent dies with it mounted
        _ = await CacheLayers(cachesDir: link.appendingPathComponent("mvncache")).recover()
        #expect(!Self.mounted(under: layers.layersDir), "the start left a dead run's overlay mounted")
    }

    @Test("a layer left unlisted (its list's write failed) never takes the next success's name: that success is kept")
    func unlistedLayerIsSkipped() async throws {
        try seed()
        try write(["stale.txt": "unlisted"], in: layers.layersDir.appendingPathComponent("\(folder)/layers/1"))
        let other = try await layers.mount(folder: folder, name: "other-1")
        let s = try await layers.mount(folder: folder, name: "b-1")
        try write(["mine.txt": "kept"], in: s.merged)
        await layers.unmount(s)
        try await layers.commit(s)
        #expect(Self.tree(layers.layersDir.appendingPathComponent(folder))["layers.json"] == #"["2"]"#)
        await layers.unmount(other)
        await layers.discard(other)
        #expect(Self.tree(base)["mine.txt"] == "kept")
        #expect(Self.tree(base)["stale.txt"] == nil, "an unlisted layer was folded")
    }

    @Test("a file that replaces a folder, and a folder that replaces a file, fold as the build left them")
    func fileAndFolderSwap() async throws {
        try write(["was-folder/x": "1", "was-file": "f"], in: base)
        let s = try await layers.mount(folder: folder, name: "b-1")
        try FileManager.default.removeItem(at: s.merged.appendingPathComponent("was-folder"))
        try "now a file".write(to: s.merged.appendingPathComponent("was-folder"), atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(at: s.merged.appendingPathComponent("was-file"))
        try write(["was-file/y": "2"], in: s.merged)
        await layers.unmount(s)
        try await layers.commit(s)
        #expect(Self.tree(base) == ["was-folder": "now a file", "was-file": "/", "was-file/y": "2"])
    }

    @Test("a layer too deep to fold (paths past PATH_MAX) resets the project's caches instead of blocking every later build")
    func unfoldableLayerResets() async throws {
        try seed()
        // The same chain of 2,500 folders in the base and in a listed layer: the fold must walk
        // it and cannot name what is at its bottom.
        let deep = "import os\nfor _ in range(2500):\n    os.makedirs('d', exist_ok=True)\n    os.chdir('d')\nopen('f', 'w').write('x')\n"
        let layer = layers.layersDir.appendingPathComponent("\(folder)/layers/1")
        for root in [base, layer] {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            let r = try Spawn.run("/usr/bin/python3", ["-c", "import os; os.chdir('\(root.path)')\n" + deep])
            #expect(r.status == 0, "\(String(decoding: r.output, as: UTF8.self))")
        }
        try Data(#"["1"]"#.utf8).write(to: layers.layersDir.appendingPathComponent("\(folder)/layers.json"))
        let notes = await layers.recover()
        #expect(notes.contains { $0.contains("are reset") }, "\(notes)")
        #expect(!FileManager.default.fileExists(atPath: base.path) || Self.tree(base).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: layers.layersDir.appendingPathComponent(folder).path), "the layers' state stayed: \(Self.tree(layers.layersDir))")
        // The next build mounts and succeeds over empty caches.
        let s = try await layers.mount(folder: folder, name: "b-1")
        try write(["fresh": "1"], in: s.merged)
        await layers.unmount(s)
        try await layers.commit(s)
        #expect(Self.tree(base) == ["fresh": "1"])
    }

    @Test("at 16 layers (builds that overlap without a pause) a new build waits, says so, and mounts once the running ones end and the stack is folded")
    func tooManyLayersWait() async throws {
        try seed()
        let holder = try await layers.mount(folder: folder, name: "holder-1")
        for i in 1...CacheLayers.maxLayers {
            let s = try await layers.mount(folder: folder, name: "s\(i)-1")
            try write(["by-\(i)": "\(i)"], in: s.merged)
            await layers.unmount(s)
            try await layers.commit(s)
        }
        let said = Locked<[String]>([])
        let layers = self.layers, folder = self.folder
        let waiting = Task { try await layers.mount(folder: folder, name: "late-1") { line in said.withLock { $0.append(line) } } }
        try await Task.sleep(for: .milliseconds(600))
        #expect(said.value.contains { $0.contains("waiting for the builds of this project") }, "\(said.value)")
        #expect(Self.tree(base)["by-1"] == nil, "folded while an overlay was mounted")
        await layers.unmount(holder)
        await layers.discard(holder)
        let late = try await waiting.value
        #expect(Self.tree(late.merged)["by-16"] == "16")
        #expect((1...CacheLayers.maxLayers).allSatisfy { Self.tree(base)["by-\($0)"] == "\($0)" })
        await layers.unmount(late)
        await layers.discard(late)
    }

    static func mounted(under dir: URL) -> Bool {
        let table = ProcFile.text("/proc/self/mountinfo") ?? ""
        let real = Containment.realPath(dir.path) ?? dir.path
        return table.contains(" \(real)/")
    }
}
