import Foundation
import KilnCore

/// Where each of a project's caches (`Project.caches`) lives on the agent, inside the
/// project's cache folder that `MavenCachePlacement` chose (`mvncache/protected/<project>` or
/// `mvncache/shared/<project>`, the unit DiskKeeper measures and evicts, and the key of the
/// one lock a build holds while it mounts them).
///
/// Rules:
/// 1. `/root/.m2` is the project folder itself: exactly the folder the Maven cache had before
///    projects declared caches, so warm caches stay warm.
/// 2. Any other path is `.kiln-caches/<name>` in it, where `<name>` is the path without its
///    leading '/' and every byte other than a letter, digit, '.', '_' or '-' written as `%XX`
///    ('/' is `%2F`): `/root/.gradle` is `.kiln-caches/root%2F.gradle`. The encoding is one to
///    one, so two paths never share a folder; it is flat, so a cache a project declared once
///    (`/root`) never holds the folder of one it declares later (`/root/.gradle`); and
///    `.kiln-caches` is no name Maven writes into `~/.m2`.
/// 3. A path `Validation.cachePath` refuses has no folder (nil), and `mounts` throws for a
///    list `Validation.caches` refuses: the agent mounts nothing for a project record that
///    skipped the scheduler's checks.
///
/// 4. `.kiln-caches` and each cache's folder in it must be plain folders: the Maven cache's
///    mount shows them under `/root/.m2/.kiln-caches`, so a build can replace one with a link
///    (to `/etc` of the agent's machine, say), which the engine would follow on the host when
///    it mounts the folder. `prepare` removes whatever is there but a folder (a link goes, not
///    what it points to) and checks the folder it returns resolves to itself.
///
/// Apart from rule 4, what a build leaves under `/root/.m2/.kiln-caches` is harmless: the
/// folders are the same project's, chosen by the same protected/shared rule, so nothing
/// crosses that line.
enum CacheLayout {
    static let maven = "/root/.m2"
    static let others = ".kiln-caches"

    /// The folder of cache `path`, relative to the project's cache folder ("" for `/root/.m2`).
    static func folder(of path: String) -> String? {
        guard (try? Validation.cachePath(path)) != nil else { return nil }
        if path == maven { return "" }
        return "\(others)/\(name(of: path))"
    }

    /// The folder of a cache (`folder(of:)`) in the project's cache folder `root` (which the
    /// agent made), made a plain folder (rule 4). Call it holding the folder's lock.
    static func prepare(_ folder: String, in root: URL) throws -> URL {
        if folder.isEmpty { return root }
        let fm = FileManager.default
        var dir = root
        for part in folder.split(separator: "/") {
            dir = dir.appendingPathComponent(String(part))
            if let type = try? fm.attributesOfItem(atPath: dir.path)[.type] as? FileAttributeType, type != .typeDirectory {
                try fm.removeItem(at: dir)
            }
            if !fm.fileExists(atPath: dir.path) { try fm.createDirectory(at: dir, withIntermediateDirectories: false) }
        }
        guard let real = Containment.realPath(dir.path), let realRoot = Containment.realPath(root.path), real == realRoot + "/" + folder else {
            throw StepFailure(step: .compile, message: "the cache folder \(folder) of the project is not a plain folder")
        }
        return dir
    }

    /// Rule 2's name of a path.
    static func name(of path: String) -> String {
        var out = ""
        for b in path.utf8.dropFirst() {
            if (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == 0x2e || b == 0x5f || b == 0x2d {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// The mounts of a build: each cache path with its folder, in the project's order.
    static func mounts(of project: Project) throws -> [(path: String, folder: String)] {
        let paths = project.effectiveCaches
        try Validation.caches(paths)
        return paths.compactMap { p in folder(of: p).map { (p, $0) } }
    }
}

private extension String {
    func leftPadded(to n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
