import CLinuxFS
import Foundation
import Glibc
import KilnCore
import Processes

/// Keeps a project's caches exactly as they were unless a build succeeds (issue 16).
///
/// A build does not write the project's cache folder (`mvncache/<protected|shared>/<project>`,
/// the *base*): it mounts an overlay whose lower layers are the base and the layers of earlier
/// successes not yet folded in, and whose upper layer is its own, empty folder. Everything the
/// build command writes, changes or deletes in its caches lands in that upper layer (a changed
/// file is copied up whole; a deleted one leaves a whiteout). When the compile container is
/// gone the overlay is unmounted and the upper layer waits for the build's end:
///
/// - the build **succeeds** (every step, the push included): the upper layer becomes the
///   newest layer of the stack (a rename, then the stack's list written to a temporary file
///   and renamed over the old one), and when no build of the folder has an overlay mounted the
///   layers are folded into the base (`fold`), oldest first;
/// - it **fails, is cancelled or times out**, or the agent dies: the upper layer is deleted.
///   The base and the stack are as they were.
///
/// **Builds at once.** Two builds of one project on one agent run together, each over the
/// stack as it was when it mounted, each with its own upper layer. Their successes are merged
/// in the order they end: per path, the build that ended last wins (its file replaces the
/// other's; its deletion deletes it; a folder it deleted and made again hides what the other
/// put in it). Maven's, Gradle's and npm's caches keep one artifact per path and version, so
/// the one that wins has the same content. Nothing is ever written to a layer that a mounted
/// overlay reads (the kernel does not allow for that): the stack only grows while overlays
/// are mounted, and is folded only when none is.
///
/// **Crash safety.** The agent's start (`recover`, before any build) unmounts what a dead run
/// left mounted, deletes every build's upper layer, deletes layers the stack's list does not
/// name (a success that died between its rename and the list's write: it is lost, the cache is
/// as it was before it), and folds the listed ones. Folding a layer is idempotent: each entry
/// leaves the layer as it is applied (moved, or a whiteout removed), and the list drops a layer
/// only when it is empty, so a fold cut short is finished by the next one.
///
/// **Trust.** A layer holds what a successful build of the same project, with the same
/// protected/shared choice (`MavenCachePlacement`), wrote: the same folder would hold it
/// without layers. Folding never follows a link (entries are looked at with `lstat`, moved
/// with `rename`, deleted without following) and descends only into real folders of both.
///
/// The layers live beside the caches, under `mvncache/.layers/<protected|shared>/<project>/`,
/// which the disk keeper neither measures nor evicts; they exist only while builds of the
/// project overlap, so the base holds the cache at any quiet moment. `--cache-writes direct`
/// (`AgentConfiguration.cacheWrites`) turns all this off: a build then writes the base in
/// place under the folder's lock, one build of the project at a time.
actor CacheLayers {
    /// Where the bases live (`mvncache`).
    nonisolated let cachesDir: URL
    /// A mount's options hold every lower layer's path; with this many the next build waits
    /// until the project's overlays are unmounted and the stack is folded.
    static let maxLayers = 16
    static let opaque = "trusted.overlay.opaque"

    private var mounted: [String: Int] = [:]
    /// Folders whose layers are being folded into their base (off the actor, `fold`): no
    /// overlay of them is mounted meanwhile.
    private var folding: Set<String> = []

    init(cachesDir: URL) {
        self.cachesDir = cachesDir
    }

    nonisolated var layersDir: URL { cachesDir.appendingPathComponent(".layers") }

    /// One build's overlay over a project's caches.
    struct Session: Sendable {
        /// The folder, relative to `mvncache` (`shared/<project>`), as `MavenCachePlacement` chose it.
        let folder: String
        /// `.layers/<folder>/builds/<name>`: upper, work and merged in it.
        let dir: URL
        var upper: URL { dir.appendingPathComponent("upper") }
        var work: URL { dir.appendingPathComponent("work") }
        /// The overlay's mount point: what the build's binds come from.
        var merged: URL { dir.appendingPathComponent("merged") }
    }

    // MARK: a build's session

    /// Mounts an overlay over `folder`'s base and layers with a new, empty upper layer named
    /// after the build (`name`: its id and attempt). Waits while the folder is being folded,
    /// and while its stack is at `maxLayers` or its paths would not fit in a mount's options
    /// (then until the folder's overlays are unmounted and the stack is folded); `log` says so.
    func mount(folder: String, name: String, log: @Sendable (String) -> Void = { _ in }) async throws -> Session {
        let base = cachesDir.appendingPathComponent(folder)
        let state = stateDir(folder)
        let session = Session(folder: folder, dir: state.appendingPathComponent("builds").appendingPathComponent(name))
        var said = false
        while true {
            if !folding.contains(folder) {
                let lowers = readList(state).reversed().map { layerDir(state, $0).path } + [base.path]
                if lowers.count - 1 < Self.maxLayers && Self.options(lowers: lowers, upper: session.upper, work: session.work).utf8.count <= Self.maxOptions { break }
                if (mounted[folder] ?? 0) == 0 {
                    await fold(folder, log: log)
                    continue
                }
            }
            if !said {
                log("caches: waiting for the builds of this project that run now to end: the changes of the builds that ran at once are folded into the caches first")
                said = true
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        try Self.plainFolder(base)
        // Left by an earlier run of this attempt (the agent died): it never counts.
        Self.unmount(session.merged)
        try? FileManager.default.removeItem(at: session.dir)
        for dir in [session.upper, session.work, session.merged] {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        }
        let lowers = readList(state).reversed().map { layerDir(state, $0).path } + [base.path]
        do {
            try Self.mountOverlay(lowers: lowers, upper: session.upper, work: session.work, at: session.merged)
        } catch {
            try? FileManager.default.removeItem(at: session.dir)
            throw error
        }
        mounted[folder, default: 0] += 1
        return session
    }

    /// Unmounts the session's overlay (its container is gone); its upper layer stays for
    /// `commit` or `discard`.
    func unmount(_ session: Session) {
        Self.unmount(session.merged)
        try? FileManager.default.removeItem(at: session.work)
        try? FileManager.default.removeItem(at: session.merged)
        let left = (mounted[session.folder] ?? 1) - 1
        mounted[session.folder] = left > 0 ? left : nil
    }

    /// The build succeeded: its upper layer joins the stack (a rename, then the list), which
    /// is folded into the base when no overlay of the folder is mounted. Throws only when the
    /// layer could not join the stack (the caches are then as they were); a fold that fails
    /// later is `fold`'s to report.
    func commit(_ session: Session, log: @Sendable (String) -> Void = { _ in }) async throws {
        let state = stateDir(session.folder)
        var list = readList(state)
        let layers = state.appendingPathComponent("layers")
        try FileManager.default.createDirectory(at: layers, withIntermediateDirectories: true)
        // Past every name listed or present: a layer a failed list write left unlisted is
        // never reused (it goes at the next start).
        let present = ((try? FileManager.default.contentsOfDirectory(atPath: layers.path)) ?? []).compactMap { Int($0) }
        let next = String(((list.compactMap { Int($0) } + present).max() ?? 0) + 1)
        try Self.rename(session.upper, to: layerDir(state, next))
        list.append(next)
        do {
            try writeList(list, state)
        } catch {
            try? FileManager.default.removeItem(at: layerDir(state, next))
            throw error
        }
        try? FileManager.default.removeItem(at: session.dir)
        if (mounted[session.folder] ?? 0) == 0 { await fold(session.folder, log: log) }
    }

    /// The build did not succeed: its upper layer goes, and nothing of it reaches the base.
    func discard(_ session: Session, log: @Sendable (String) -> Void = { _ in }) async {
        Self.unmount(session.merged)
        try? FileManager.default.removeItem(at: session.dir)
        if (mounted[session.folder] ?? 0) == 0 { await fold(session.folder, log: log) }
    }

    // MARK: the agent's start

    /// Before any build: unmounts and deletes every build's layer a dead run left, drops
    /// layers the lists do not name, and folds the rest. Returns what it did, for the log.
    func recover() async -> [String] {
        let notes = Locked<[String]>([])
        let fm = FileManager.default
        Self.unmountAll(under: layersDir)
        for kind in ["protected", "shared"] {
            let parent = layersDir.appendingPathComponent(kind)
            for project in (try? fm.contentsOfDirectory(atPath: parent.path)) ?? [] {
                let folder = "\(kind)/\(project)"
                let state = stateDir(folder)
                let builds = state.appendingPathComponent("builds")
                let dropped = (try? fm.contentsOfDirectory(atPath: builds.path)) ?? []
                Self.removeTree(builds)
                if !dropped.isEmpty { notes.withLock { $0.append("\(folder): dropped the cache changes of \(dropped.count) build(s) that did not end: \(dropped.sorted().joined(separator: ", "))") } }
                let list = readList(state)
                for name in (try? fm.contentsOfDirectory(atPath: state.appendingPathComponent("layers").path)) ?? [] where !list.contains(name) {
                    Self.removeTree(layerDir(state, name))
                }
                guard !list.isEmpty else { continue }
                await fold(folder) { note in notes.withLock { $0.append("\(folder): \(note)") } }
                if readList(state).isEmpty { notes.withLock { $0.append("\(folder): folded \(list.count) layer(s) of successful builds into the cache") } }
            }
        }
        return notes.value
    }

    // MARK: folding

    /// Folds the folder's layers into its base, oldest first, off the actor (other folders'
    /// builds go on; this folder's mounts wait). Call with no overlay of it mounted; a fold
    /// already running picks up the layers added meanwhile. A layer that cannot be folded
    /// (a tree too deep for a path, a full disk) resets the folder's caches, base and layers:
    /// they are caches, and half a layer is no state a build ever saw.
    func fold(_ folder: String, log: @Sendable (String) -> Void = { _ in }) async {
        guard !folding.contains(folder), (mounted[folder] ?? 0) == 0 else { return }
        folding.insert(folder)
        defer {
            folding.remove(folder)
            tidy(folder)
        }
        let state = stateDir(folder)
        let base = cachesDir.appendingPathComponent(folder)
        while let first = readList(state).first {
            let layer = layerDir(state, first)
            do {
                try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
                try Self.plainFolder(base)
                try await blocking(cancel: nil) {
                    if FileManager.default.fileExists(atPath: layer.path) { try Self.apply(layer, onto: base) }
                    Self.removeTree(layer)
                }
                var list = readList(state)
                list.removeAll { $0 == first }
                try writeList(list, state)
            } catch {
                log("caches: the changes of a successful build could not be folded into the caches (\(error)); the caches of \(folder) are reset, and the next build of it starts with empty ones")
                _ = try? await blocking(cancel: nil) { [self] in
                    for layer in readList(state) { Self.removeTree(layerDir(state, layer)) }
                    try? writeList([], state)
                    Self.removeTree(base)
                }
                return
            }
        }
    }

    /// Deletes the folder's state when nothing is in it (no layer listed, no build's layer
    /// waiting, nothing mounted): at a quiet moment the base is all there is.
    private func tidy(_ folder: String) {
        let state = stateDir(folder)
        guard (mounted[folder] ?? 0) == 0, !folding.contains(folder), readList(state).isEmpty else { return }
        let fm = FileManager.default
        guard ((try? fm.contentsOfDirectory(atPath: state.appendingPathComponent("builds").path)) ?? []).isEmpty,
              ((try? fm.contentsOfDirectory(atPath: state.appendingPathComponent("layers").path)) ?? []).isEmpty else { return }
        try? fm.removeItem(at: state)
    }

    /// Applies one layer (an overlay's upper folder) onto `base`, emptying it as it goes.
    static func apply(_ layer: URL, onto base: URL) throws {
        let fm = FileManager.default
        for name in try fm.contentsOfDirectory(atPath: layer.path) {
            let from = layer.appendingPathComponent(name), to = base.appendingPathComponent(name)
            guard let entry = lstatType(from) else {
                throw KilnError.unavailable("cannot read \(from.path): \(String(cString: strerror(errno)))")
            }
            let there = lstatType(to)
            switch entry {
            case .whiteout:
                if there != nil { try fm.removeItem(at: to) }
                try fm.removeItem(at: from)
            case .folder where !isOpaque(from) && there == .folder:
                try apply(from, onto: to)
                copyOwnerAndMode(from, to)
                try fm.removeItem(at: from)
            case .folder:
                // New here, or replacing what was there (an opaque folder, or a file before).
                if there != nil { try fm.removeItem(at: to) }
                lremovexattr(from.path, opaque)
                try rename(from, to: to)
            case .other:
                if there == .folder { try fm.removeItem(at: to) }
                try rename(from, to: to)
            }
        }
    }

    enum EntryType { case folder, whiteout, other }

    static func lstatType(_ url: URL) -> EntryType? {
        var st = stat()
        guard lstat(url.path, &st) == 0 else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: return .folder
        case S_IFCHR where st.st_rdev == 0: return .whiteout
        default: return .other
        }
    }

    static func isOpaque(_ url: URL) -> Bool {
        var value = [UInt8](repeating: 0, count: 4)
        let n = lgetxattr(url.path, opaque, &value, value.count)
        return n == 1 && value[0] == UInt8(ascii: "y")
    }

    private static func copyOwnerAndMode(_ from: URL, _ to: URL) {
        var st = stat()
        guard lstat(from.path, &st) == 0 else { return }
        _ = lchown(to.path, st.st_uid, st.st_gid)
        _ = chmod(to.path, st.st_mode & 0o7777)
    }

    private static func rename(_ from: URL, to: URL) throws {
        guard Glibc.rename(from.path, to.path) == 0 else {
            throw KilnError.unavailable("cannot move \(from.path) to \(to.path): \(String(cString: strerror(errno)))")
        }
    }

    // MARK: mounts

    /// A mount's options fit in a page (the kernel cuts what is longer).
    static let maxOptions = 4000

    /// The options of a build's overlay. They keep the upper layer plain (no redirects, no
    /// metacopy, no index), so that it can be read as a lower layer and folded by `apply`;
    /// `nofollow` also ignores a redirect found in a lower layer.
    static func options(lowers: [String], upper: URL, work: URL) -> String {
        "lowerdir=\(lowers.joined(separator: ":")),upperdir=\(upper.path),workdir=\(work.path),redirect_dir=nofollow,index=off,metacopy=off"
    }

    /// Mounts an overlay (`options`), `nosuid,nodev`.
    static func mountOverlay(lowers: [String], upper: URL, work: URL, at target: URL) throws {
        for path in lowers + [upper.path, work.path] where path.contains(where: { ",:\\".contains($0) }) {
            throw KilnError.invalid("the cache folder \(path) has a ',', ':' or '\\' in its path, which an overlay mount cannot take: move the agent's --data-dir")
        }
        let options = options(lowers: lowers, upper: upper, work: work)
        guard options.utf8.count <= maxOptions else {
            throw KilnError.invalid("the overlay of the caches needs \(options.utf8.count) bytes of mount options, more than \(maxOptions): the agent's --data-dir path is too long")
        }
        guard Glibc.mount("overlay", target.path, "overlay", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            let reason = String(cString: strerror(errno))
            throw KilnError.unavailable("cannot mount the overlay that keeps a failed build's cache changes apart (\(reason)). The data dir's filesystem must be one overlayfs can write into (ext4, xfs with d_type), and the agent must run as root; or pass --cache-writes direct (a failed build's cache changes then stay)")
        }
    }

    /// Unmounts the mount at `point` if there is one, detaching it if it is busy (by path: the
    /// kernel resolves links in it, which a match against /proc's table would not).
    static func unmount(_ point: URL) {
        if umount2(point.path, 0) != 0 && errno == EBUSY { _ = umount2(point.path, Int32(MNT_DETACH)) }
    }

    /// Unmounts every mount at or under `dir` (deepest first), detaching a busy one.
    static func unmountAll(under dir: URL) {
        let points = ProcFile.mountPoints(under: Containment.realPath(dir.path) ?? dir.standardizedFileURL.path)
        for point in points.sorted(by: { $0.count > $1.count }) where umount2(point, 0) != 0 {
            _ = umount2(point, Int32(MNT_DETACH))
        }
    }

    /// Deletes a tree of any depth without following links (`rm -rf`, which walks with
    /// directory descriptors; Foundation's walk gives up past PATH_MAX).
    static func removeTree(_ url: URL) {
        guard lstatType(url) != nil else { return }
        if (try? FileManager.default.removeItem(at: url)) != nil, lstatType(url) == nil { return }
        _ = try? Spawn.run("/bin/rm", ["-rf", "--one-file-system", "--", url.path], discardStderr: true)
    }

    /// Whether an overlay can be mounted and written in `dir`'s filesystem, as builds mount
    /// theirs; nil if it can, else why not.
    static func probe(in dir: URL) -> String? {
        let root = dir.appendingPathComponent(".probe-\(getpid())")
        defer { unmountAll(under: root); removeTree(root) }
        do {
            let lower = root.appendingPathComponent("lower"), upper = root.appendingPathComponent("upper")
            let work = root.appendingPathComponent("work"), merged = root.appendingPathComponent("merged")
            for d in [lower, upper, work, merged] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
            try Data("kept\n".utf8).write(to: lower.appendingPathComponent("a"))
            try FileManager.default.createDirectory(at: lower.appendingPathComponent("d"), withIntermediateDirectories: true)
            try Data("old\n".utf8).write(to: lower.appendingPathComponent("d/x"))
            try mountOverlay(lowers: [lower.path], upper: upper, work: work, at: merged)
            // A deleted file (a whiteout) and a folder deleted and made again (opaque: a trusted
            // xattr, which the filesystem must keep), as builds leave them and `apply` reads them.
            try FileManager.default.removeItem(at: merged.appendingPathComponent("a"))
            try FileManager.default.removeItem(at: merged.appendingPathComponent("d"))
            try FileManager.default.createDirectory(at: merged.appendingPathComponent("d"), withIntermediateDirectories: false)
            unmount(merged)
            guard lstatType(upper.appendingPathComponent("a")) == .whiteout, FileManager.default.fileExists(atPath: lower.appendingPathComponent("a").path) else {
                return "an overlay in \(dir.path) did not leave a whiteout in its upper folder"
            }
            guard isOpaque(upper.appendingPathComponent("d")) else {
                return "an overlay in \(dir.path) did not mark a folder made again as opaque (the filesystem keeps no trusted.* extended attributes)"
            }
            return nil
        } catch let e as KilnError {
            return e.message
        } catch {
            return "\(error)"
        }
    }

    // MARK: the stack's list

    nonisolated private func stateDir(_ folder: String) -> URL { layersDir.appendingPathComponent(folder) }
    nonisolated private func layerDir(_ state: URL, _ name: String) -> URL { state.appendingPathComponent("layers").appendingPathComponent(name) }

    /// The names of the folder's layers, oldest first.
    nonisolated private func readList(_ state: URL) -> [String] {
        guard let data = try? Data(contentsOf: state.appendingPathComponent("layers.json")),
              let list = try? JSONDecoder().decode([String].self, from: data) else { return [] }
        return list.filter { Int($0) != nil }
    }

    nonisolated private func writeList(_ list: [String], _ state: URL) throws {
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        // Written to a temporary file and renamed over the old one: a crash leaves one or the other.
        try JSONEncoder().encode(list).write(to: state.appendingPathComponent("layers.json"), options: .atomic)
    }

    /// The base must be a real folder (a link would send the mount elsewhere); its parents
    /// are the agent's own.
    private static func plainFolder(_ dir: URL) throws {
        if lstatType(dir) == nil { try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true) }
        guard lstatType(dir) == .folder else {
            throw StepFailure(step: .compile, message: "the project's cache folder \(dir.lastPathComponent) is not a plain folder")
        }
    }
}

extension BuildRunner {
    /// Where the compile step leaves its cache changes (`CacheLayers.Session`) for the build's
    /// end, which keeps them (it succeeded) or drops them (any other end, a step's failure,
    /// a lost record write or a time limit that won the race against a finished compile).
    final class CacheChanges: Sendable {
        private let session = Locked<CacheLayers.Session?>(nil)
        func set(_ s: CacheLayers.Session) { session.value = s }
        func take() -> CacheLayers.Session? { session.withLock { s in defer { s = nil }; return s } }
    }

    /// The build succeeded: its cache changes join the project's caches. A failure here fails
    /// nothing (the caches are as they were, which is always allowed) and is logged.
    func keepCacheChanges(_ changes: CacheChanges, reporter: BuildReporter) async {
        guard let session = changes.take() else { return }
        let layers = cacheLayers
        let log: @Sendable (String) -> Void = { reporter.log($0) }
        do {
            try await outlivingCancellation { try await layers.commit(session, log: log) }
            reporter.log("caches: this build's changes are kept")
        } catch {
            await outlivingCancellation { await layers.discard(session, log: log) }
            reporter.log("caches: could not keep this build's changes, the caches stay as they were: \(error)")
        }
    }

    /// Any other end: the compile step's cache changes, if it left any, are dropped.
    func dropCacheChanges(_ changes: CacheChanges, reporter: BuildReporter) async {
        guard let session = changes.take() else { return }
        let layers = cacheLayers
        await outlivingCancellation { await layers.discard(session) { reporter.log($0) } }
        reporter.log("caches: the changes of this build to them are dropped (the build did not succeed)")
    }
}
