import Crypto
import Foundation
import KilnCore

/// The keys that seal Kiln's secrets in etcd (AES-256-GCM), read from the secrets key file
/// (`--secrets-key-file`, mode 0600; `kiln up` makes one in `<data-dir>/credentials/`).
///
/// The file holds one key a line, `v1 <base64 of 32 bytes>` (blank lines and `#` comments
/// are skipped). The first key seals; every key opens. A key is named by its id, the first
/// eight hex digits of the SHA-256 of its bytes, which every sealed value carries: a value
/// sealed under a key the file lacks is named as such, never decrypted with the wrong key.
///
/// Rotation (`kiln secrets rotate`) writes a new first key into the file while the farm
/// runs; every keyring notices the file's change at its next seal or open (a `stat` each
/// time) and reads it again, so no scheduler seals under a key that is about to go.
///
/// Rule for callers: bind every value to the name it is stored under (`boundTo`, the etcd
/// key): it is the AES-GCM additional data, so a sealed value copied to another key (another
/// project's secret) fails to open.
public final class SecretsKeyring: Sendable {
    public struct Key: Sendable {
        public let id: String
        let key: SymmetricKey
    }

    struct Loaded: Sendable {
        var keys: [Key]
        var stamp: FileStamp
    }

    /// What changes when the file is replaced or rewritten.
    struct FileStamp: Equatable, Sendable {
        var device: UInt64, inode: UInt64, size: Int64, mtimeSec: Int, mtimeNsec: Int
    }

    public let path: String
    let state: Locked<Loaded>

    /// Reads the key file; throws `KilnError.invalid` saying what to do when it is missing,
    /// readable by others, or holds no valid key.
    public init(path: String) throws {
        self.path = path
        state = Locked(try Self.load(path))
    }

    /// The id of the key that seals.
    public var primaryID: String { current().keys[0].id }
    /// The ids of every key the file holds, the sealing one first.
    public var keyIDs: [String] { current().keys.map(\.id) }

    /// Seals `plaintext` under the first key, bound to `name`.
    public func seal(_ plaintext: Data, boundTo name: String) throws -> SealedValue {
        let key = current().keys[0]
        let box = try AES.GCM.seal(plaintext, using: key.key, authenticating: Data(name.utf8))
        return SealedValue(kid: key.id, nonce: Data(box.nonce).base64EncodedString(), box: (box.ciphertext + box.tag).base64EncodedString())
    }

    public func seal(_ text: String, boundTo name: String) throws -> SealedValue {
        try seal(Data(text.utf8), boundTo: name)
    }

    /// Opens a value sealed under any key of the file, bound to `name`. Throws
    /// `KilnError.unavailable` naming the key when the file does not hold it, and
    /// `KilnError.invalid` when the value was altered or moved from another name.
    public func open(_ sealed: SealedValue, boundTo name: String) throws -> Data {
        guard let key = current().keys.first(where: { $0.id == sealed.kid }) else {
            throw KilnError.unavailable("a secret (\(Validation.printable(name))) is sealed under key \(Validation.printable(sealed.kid)), which the secrets key file \(path) does not hold (it holds \(keyIDs.joined(separator: ", "))): give this scheduler the farm's key file, or the one from before a rotation")
        }
        guard let nonceBytes = Data(base64Encoded: sealed.nonce), let boxBytes = Data(base64Encoded: sealed.box), boxBytes.count >= 16,
              let nonce = try? AES.GCM.Nonce(data: nonceBytes),
              let box = try? AES.GCM.SealedBox(nonce: nonce, ciphertext: boxBytes.dropLast(16), tag: boxBytes.suffix(16)) else {
            throw KilnError.invalid("the sealed secret at \(Validation.printable(name)) is malformed")
        }
        do {
            return try AES.GCM.open(box, using: key.key, authenticating: Data(name.utf8))
        } catch {
            throw KilnError.invalid("the sealed secret at \(Validation.printable(name)) does not open under key \(key.id): it was altered, or moved from another key")
        }
    }

    public func openString(_ sealed: SealedValue, boundTo name: String) throws -> String {
        String(decoding: try open(sealed, boundTo: name), as: UTF8.self)
    }

    /// The keys as they are now: the file is read again when it changed since the last look.
    /// A file that became unreadable or empty keeps the keys already loaded (a rotation's
    /// rename never leaves it so; an operator's mistake must not stop the farm mid-build). So
    /// does a file without the key that seals now: a rotation adds a key in front of it and a
    /// prune keeps it, so only another farm's (or a lost) key file lacks it, and sealing under
    /// that would leave values the other schedulers cannot open. A restart with such a file
    /// meets the start check instead.
    func current() -> Loaded {
        let stamp = Self.stamp(path)
        return state.withLock { loaded in
            guard let stamp, stamp != loaded.stamp else { return loaded }
            if let fresh = try? Self.load(path), fresh.keys.contains(where: { $0.id == loaded.keys[0].id }) {
                loaded = fresh
            } else {
                loaded.stamp = stamp
            }
            return loaded
        }
    }

    static func stamp(_ path: String) -> FileStamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileStamp(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size),
                         mtimeSec: Int(st.st_mtim.tv_sec), mtimeNsec: Int(st.st_mtim.tv_nsec))
    }

    static func load(_ path: String) throws -> Loaded {
        guard FileManager.default.fileExists(atPath: path) else {
            throw KilnError.invalid("there is no secrets key file at \(path): make one with `kiln secrets key new --file \(path)` (kiln up makes <data-dir>/credentials/secrets-key), or point --secrets-key-file at the farm's key")
        }
        let stamp = Self.stamp(path)
        let text = try CredentialFile.read(path)
        let keys = try parse(text, path: path)
        return Loaded(keys: keys, stamp: stamp ?? FileStamp(device: 0, inode: 0, size: 0, mtimeSec: 0, mtimeNsec: 0))
    }

    /// The keys of a key file's text, in order. Throws naming the first bad line.
    public static func parse(_ text: String, path: String = "the secrets key file") throws -> [Key] {
        var keys: [Key] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2, parts[0] == "v1", let bytes = Data(base64Encoded: String(parts[1])), bytes.count == 32 else {
                throw KilnError.invalid("line \(n + 1) of \(path) is not a key: each line is `v1 ` and the base64 of 32 random bytes (make a file with `kiln secrets key new --file PATH`)")
            }
            let key = Key(id: keyID(bytes), key: SymmetricKey(data: bytes))
            if !keys.contains(where: { $0.id == key.id }) { keys.append(key) }
        }
        guard !keys.isEmpty else { throw KilnError.invalid("\(path) holds no key: make one with `kiln secrets key new --file \(path)`") }
        return keys
    }

    static func keyID(_ bytes: Data) -> String {
        SHA256.hash(data: bytes).prefix(4).map { String(format: "%02x", $0) }.joined()
    }

    /// One new key's line for a key file.
    public static func newKeyLine() -> String {
        "v1 " + Data(Secret.randomBytes(32)).base64EncodedString()
    }

    /// Creates a key file with one new key, mode 0600; an existing file is kept as it is.
    /// Returns the id of its sealing key.
    @discardableResult
    public static func create(at path: String) throws -> String {
        let text = try CredentialFile.writeIfAbsent(newKeyLine(), to: path)
        return try parse(text, path: path)[0].id
    }

    /// Puts a new key first in the file (it seals from now on) and keeps the others (they
    /// still open what they sealed until `kiln secrets rotate` has sealed it again). The file
    /// is replaced atomically at mode 0600. Returns the new key's id.
    public static func addKey(at path: String) throws -> String {
        let old = try CredentialFile.read(path)
        _ = try parse(old, path: path)
        let line = newKeyLine()
        try CredentialFile.write(line + "\n" + old + "\n", to: path)
        return try parse(line)[0].id
    }

    /// Keeps only the keys whose ids are in `keep` (the sealing key is always kept).
    public static func keepOnly(_ keep: Set<String>, at path: String) throws {
        let text = try CredentialFile.read(path)
        let keys = try parse(text, path: path)
        var lines: [String] = []
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#"), let k = try? parse(line).first else { continue }
            if k.id == keys[0].id || keep.contains(k.id) { lines.append(line) }
        }
        try CredentialFile.write(lines.joined(separator: "\n") + "\n", to: path)
    }
}

/// A value sealed by a `SecretsKeyring`: the key's id, the nonce and the ciphertext with its
/// tag, both base64. This is all etcd ever holds of a secret.
public struct SealedValue: Codable, Sendable, Equatable {
    public var kid: String
    public var nonce: String
    public var box: String

    public init(kid: String, nonce: String, box: String) {
        self.kid = kid
        self.nonce = nonce
        self.box = box
    }
}
