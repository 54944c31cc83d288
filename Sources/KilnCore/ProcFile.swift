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

    /// The mount points at or under `root` (a real path: the table has real paths), from
    /// /proc/self/mountinfo (field 5, with space, tab, newline and '\' written in octal).
    public static func mountPoints(under root: String) -> [String] {
        guard let text = text("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            let point = unescapeMountInfo(String(fields[4]))
            return point == root || point.hasPrefix(root + "/") ? point : nil
        }
    }

    static func unescapeMountInfo(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        let utf8 = Array(s.utf8)
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count,
               let value = UInt8(String(decoding: utf8[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(utf8[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
