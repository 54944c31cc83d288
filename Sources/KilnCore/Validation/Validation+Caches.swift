import Foundation

extension Validation {
    /// The most cache folders a project declares (`Project.caches`).
    public static let maxCaches = 8
    /// The longest cache path, in bytes: its folder name on the agent (`CacheLayout`) stays
    /// well under a filesystem's 255.
    public static let maxCachePathLength = 100
    /// Container folders no cache may be or sit in: the kernel's (/proc, /sys, /dev), the
    /// image's programs and settings, and Kiln's own mounts (/workspace is the checkout,
    /// /run/secrets the build's secrets, /etc/maven the agent's settings.xml).
    public static let systemFolders = ["/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64",
                                       "/libx32", "/boot", "/run", "/var/run", "/workspace"]

    /// One cache folder of a project, as a container path: absolute, normalized (no `.` or
    /// `..` component, no `//`, no trailing `/`), of letters, digits, '.', '_', '-' and '/',
    /// at most `maxCachePathLength` bytes, not `/` and neither a system folder
    /// (`systemFolders`) nor inside one nor holding one.
    public static func cachePath(_ path: String) throws {
        func bad(_ why: String) -> KilnError {
            KilnError.invalid("cache '\(printable(path))' is refused: \(why); give the absolute container path of a folder the build caches into, such as /root/.m2 or /root/.gradle")
        }
        if path.isEmpty { throw KilnError.invalid("cache is empty: give the absolute container path of a folder the build caches into, such as /root/.m2") }
        if path.utf8.count > maxCachePathLength { throw bad("it is longer than \(maxCachePathLength) characters") }
        guard path.hasPrefix("/") else { throw bad("it is not absolute (it must start with '/')") }
        if path == "/" { throw bad("it is the container's root") }
        for b in path.utf8 where !(isLower(b) || isUpper(b) || isDigit(b) || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-") || b == UInt8(ascii: "/")) {
            throw bad("it has '\(printable(String(decoding: [b], as: UTF8.self)))': use only letters, digits, '.', '_', '-' and '/'")
        }
        if path.hasSuffix("/") { throw bad("it ends with '/'") }
        if path.contains("//") { throw bad("it contains '//'") }
        let parts = path.split(separator: "/")
        if parts.contains(".") || parts.contains("..") { throw bad("it has a '.' or '..' component: write the path without them") }
        for folder in systemFolders where isInside(path, folder) || isInside(folder, path) {
            throw bad(folder == "/workspace" ? "/workspace is the checkout, mounted by Kiln" : "it is or holds the system folder \(folder)")
        }
    }

    /// A project's list of caches: each one valid, at most `maxCaches`, no duplicates, and
    /// none inside another (two mounts would then share files, and which one wins depends on
    /// the order of the mounts).
    public static func caches(_ paths: [String]) throws {
        if paths.count > maxCaches { throw KilnError.invalid("caches lists \(paths.count) folders: use at most \(maxCaches)") }
        for p in paths { try cachePath(p) }
        for (i, a) in paths.enumerated() {
            for b in paths[(i + 1)...] {
                if a == b { throw KilnError.invalid("cache '\(a)' is listed twice") }
                if isInside(a, b) || isInside(b, a) {
                    let (inner, outer) = a.count > b.count ? (a, b) : (b, a)
                    throw KilnError.invalid("cache '\(inner)' is inside cache '\(outer)': list only '\(outer)'")
                }
            }
        }
    }

    /// Whether `path` is `folder` or below it (whole components: /root/.m2x is not below /root/.m2).
    static func isInside(_ path: String, _ folder: String) -> Bool {
        path == folder || path.hasPrefix(folder + "/")
    }
}
