import _CryptoExtras
import Crypto
import Foundation
import KilnCore

/// Passwords kept as scrypt hashes: `scrypt$N$r$p$SALT$HASH` (base64), so the parameters can
/// be raised later and old hashes still check.
///
/// scrypt (swift-crypto's `KDF.Scrypt`) costs time and memory per guess (N = 2^15, r = 8:
/// 32 MiB), which makes a stolen etcd copy slow to attack. Comparison is constant-time, and a
/// login for an unknown user checks against a dummy hash, so the answer takes the same time
/// whether the user exists or not.
public enum PasswordHasher {
    static let rounds = 1 << 15, blockSize = 8, parallelism = 1, saltBytes = 16, hashBytes = 32

    public static func hash(_ password: String) throws -> String {
        let salt = Array(Secret.randomBytes(saltBytes))
        let derived = try derive(password, salt: salt, rounds: rounds, blockSize: blockSize, parallelism: parallelism)
        return "scrypt$\(rounds)$\(blockSize)$\(parallelism)$\(Data(salt).base64EncodedString())$\(Data(derived).base64EncodedString())"
    }

    /// Whether `password` matches `stored`; false for a malformed hash. With `stored` nil,
    /// spends the same time on a dummy hash and answers false.
    public static func verify(_ password: String, against stored: String?) -> Bool {
        guard let stored, let parsed = parse(stored) else {
            _ = try? derive(password, salt: Array(repeating: 0, count: saltBytes), rounds: rounds, blockSize: blockSize, parallelism: parallelism)
            return false
        }
        guard let derived = try? derive(password, salt: parsed.salt, rounds: parsed.rounds, blockSize: parsed.blockSize, parallelism: parsed.parallelism) else { return false }
        return Secret.equal(derived, parsed.hash)
    }

    static func derive(_ password: String, salt: [UInt8], rounds: Int, blockSize: Int, parallelism: Int) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(from: Array(password.utf8), salt: salt, outputByteCount: hashBytes,
                                           rounds: rounds, blockSize: blockSize, parallelism: parallelism)
        return key.withUnsafeBytes { Array($0) }
    }

    static func parse(_ stored: String) -> (rounds: Int, blockSize: Int, parallelism: Int, salt: [UInt8], hash: [UInt8])? {
        let parts = stored.split(separator: "$").map(String.init)
        guard parts.count == 6, parts[0] == "scrypt",
              let n = Int(parts[1]), let r = Int(parts[2]), let p = Int(parts[3]),
              // Bounds, so a hash planted in etcd cannot make a login take minutes or gigabytes.
              n >= 2, n <= 1 << 20, n & (n - 1) == 0, (1...32).contains(r), (1...16).contains(p),
              let salt = Data(base64Encoded: parts[4]), let hash = Data(base64Encoded: parts[5]), !hash.isEmpty else { return nil }
        return (n, r, p, Array(salt), Array(hash))
    }
}

extension SHA256 {
    /// The lower-case hex SHA-256 of `text`: the etcd key of an API token or a session.
    static func hex(_ text: String) -> String {
        SHA256.hash(data: Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
