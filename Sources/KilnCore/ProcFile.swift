import Foundation

/// Reads a file of /proc whole. `String(contentsOfFile:)` and `Data(contentsOf:)` read such a
/// file in one chunk of about 4 KiB, because /proc reports a size of 0: /proc/self/mountinfo
/// on a machine with a few dozen mounts, or /proc/net/tcp with many sockets, came back cut
/// short, and what was after the cut was never seen (a mount never unmounted).
public enum ProcFile {
    public static func data(_ path: String) -> Data? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        return try? handle.readToEnd() ?? Data()
    }

    public static func text(_ path: String) -> String? {
        data(path).map { String(decoding: $0, as: UTF8.self) }
    }
}
