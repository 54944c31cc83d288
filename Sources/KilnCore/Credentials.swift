import Foundation

/// A credential kept in a file of its own, readable by its owner only (mode 0600).
///
/// Kiln keeps every credential this way (`<data-dir>/credentials/` for `kiln up`): the etcd
/// users' `user:password`, the admin token, the registry's signing key, the machines' tokens.
/// Reading refuses a file that group or others may read, and says how to fix it; writing
/// creates the file with mode 0600 from the start (never a moment with a wider mode) and
/// replaces it atomically. This is the one place of KilnCore that touches the file system.
public enum CredentialFile {
    /// The file's contents, without a trailing newline. Throws `KilnError.invalid` if the
    /// file is missing, empty, or readable by group or others.
    public static func read(_ path: String) throws -> String {
        // Opened once, without following a link, and checked through the descriptor: what is
        // checked is what is read (no swap between a stat and an open).
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = errno == ELOOP ? "it is a symbolic link; point the option at the file itself" : String(cString: strerror(errno))
            throw KilnError.invalid("cannot read the credential file \(path): \(reason)")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw KilnError.invalid("the credential file \(path) is not a regular file")
        }
        guard st.st_uid == geteuid() else {
            throw KilnError.invalid("the credential file \(path) belongs to user \(st.st_uid), not to this process's user \(geteuid()): `chown` it to the user Kiln runs as")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw KilnError.invalid("the credential file \(path) may be read by others (mode \(String(st.st_mode & 0o777, radix: 8))): run `chmod 600 \(path)`")
        }
        guard st.st_size <= 1 << 20 else { throw KilnError.invalid("the credential file \(path) is larger than 1 MiB") }
        try checkFolder(of: path)
        var data = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < data.count {
            let n = data.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress! + got, $0.count - got) }
            guard n > 0 else { break }
            got += n
        }
        var text = String(decoding: data[..<got], as: UTF8.self)
        while text.last == "\n" || text.last == "\r" { text.removeLast() }
        guard !text.isEmpty else { throw KilnError.invalid("the credential file \(path) is empty") }
        return text
    }

    /// The folder holding a credential file must belong to this process's user or root and be
    /// writable by no one else: whoever may write the folder may rename, remove or replace
    /// the file (a hard link to another file of ours, for one).
    static func checkFolder(of path: String) throws {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var st = stat()
        guard stat(folder, &st) == 0 else {
            throw KilnError.invalid("cannot check the folder \(folder) of the credential file: \(String(cString: strerror(errno)))")
        }
        guard st.st_uid == geteuid() || st.st_uid == 0 else {
            throw KilnError.invalid("the folder \(folder) of the credential file \(path) belongs to user \(st.st_uid): keep credentials in a folder of the user Kiln runs as (or root)")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw KilnError.invalid("others may write the folder \(folder) of the credential file \(path) (mode \(String(st.st_mode & 0o777, radix: 8))): run `chmod go-w \(folder)`, or keep credentials in a folder of mode 0700")
        }
    }

    /// Writes `contents` (plus a newline) to `path` with mode 0600, atomically: a temporary
    /// file made 0600 in the same folder, then renamed over `path`. Creates the folder (0700).
    public static func write(_ contents: String, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temporary = dir.appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString.prefix(8))").path
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw KilnError.internalError("cannot create \(temporary): \(String(cString: strerror(errno)))")
        }
        let bytes = Array((contents + "\n").utf8)
        let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == bytes.count, synced == 0, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw KilnError.internalError("cannot write the credential file \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes `contents` to `path` (mode 0600) only if no file is there, atomically against
    /// another process doing the same (a hard link of a complete temporary file, which fails
    /// if the name exists); returns what the file holds afterwards: ours, or the other's.
    public static func writeIfAbsent(_ contents: String, to path: String) throws -> String {
        let url = URL(fileURLWithPath: path)
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).new-\(UUID().uuidString.prefix(8))").path
        try write(contents, to: temporary)
        defer { unlink(temporary) }
        if link(temporary, path) != 0 {
            guard errno == EEXIST else { throw KilnError.internalError("cannot create the credential file \(path): \(String(cString: strerror(errno)))") }
            return try read(path)
        }
        return contents
    }

    /// `contents` of `path` if the file exists; otherwise a new secret written there first.
    /// For `kiln up`, which keeps its credentials from one start to the next.
    public static func readOrCreate(_ path: String, make: () -> String = { Secret.random() }) throws -> String {
        if FileManager.default.fileExists(atPath: path) { return try read(path) }
        let value = make()
        try write(value, to: path)
        return value
    }
}

/// A `user:password` pair, the form `etcdctl --user` takes and HTTP Basic carries.
public struct UserPassword: Sendable, Equatable, CustomStringConvertible {
    public let user: String
    public let password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    /// Splits at the first ':'; nil if either side is empty.
    public init?(_ text: String) {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let user = String(text[..<colon]), password = String(text[text.index(after: colon)...])
        guard !user.isEmpty, !password.isEmpty else { return nil }
        self.init(user: user, password: password)
    }

    /// Reads a credential file holding `user:password`.
    public static func read(_ path: String) throws -> UserPassword {
        guard let value = UserPassword(try CredentialFile.read(path)) else {
            throw KilnError.invalid("the credential file \(path) does not hold user:password")
        }
        return value
    }

    public var text: String { "\(user):\(password)" }
    /// Never the password: safe to log.
    public var description: String { "\(user):***" }
}

/// Random secrets for tokens and passwords.
public enum Secret {
    /// `bytes` random bytes from the system's generator, URL-safe base64 without padding
    /// (43 characters for the default 32 bytes): fits a URL, a header and a `user:password`.
    public static func random(bytes: Int = 32) -> String {
        Data(randomBytes(bytes)).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// `count` bytes from the system's generator.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Compares two secrets in time that does not depend on where they first differ.
    public static func equal(_ a: String, _ b: String) -> Bool { equal(Array(a.utf8), Array(b.utf8)) }

    /// The same, for bytes.
    public static func equal(_ x: [UInt8], _ y: [UInt8]) -> Bool {
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<min(x.count, y.count) { diff |= x[i] ^ y[i] }
        return diff == 0
    }
}
