import _CryptoExtras
import Crypto
import Foundation
import Synchronization
import KilnCore

/// Passwords kept as scrypt hashes: `scrypt$N$r$p$SALT$HASH` (base64), so the parameters can
/// be raised later and old hashes still check.
///
/// scrypt (swift-crypto's `KDF.Scrypt`) costs time and memory per guess (N = 2^15, r = 8:
/// 32 MiB), which makes a stolen etcd copy slow to attack. Comparison is constant-time, and a
/// login for an unknown user checks against a dummy hash, so the answer takes the same time
/// whether the user exists or not.
public enum PasswordHasher {
    /// At most as many password checks at once as there are cores, and a short queue: each
    /// costs 32 MiB and tens of milliseconds, so a flood of logins must not take the memory
    /// and the threads the dispatcher and the API need.
    static let limiter = WorkLimiter(running: max(1, ProcessInfo.processInfo.activeProcessorCount), waiting: 32)

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

/// Runs expensive work at most `running` at a time, with at most `waiting` queued; beyond that
/// it refuses at once (503) instead of piling up.
final class WorkLimiter: Sendable {
    private struct State {
        var running = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    let running: Int, waiting: Int

    init(running: Int, waiting: Int) {
        self.running = running
        self.waiting = waiting
    }

    func run<T: Sendable>(_ work: @Sendable () async throws -> T) async throws -> T {
        try await acquire()
        defer { release() }
        return try await work()
    }

    private func acquire() async throws {
        enum Decision { case go, wait, refuse }
        let decision: Decision = state.withLock { s in
            if s.running < running { s.running += 1; return .go }
            return s.waiters.count < waiting ? .wait : .refuse
        }
        switch decision {
        case .go: return
        case .refuse: throw KilnError.unavailable("too many logins at once: try again in a moment")
        case .wait:
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let startNow: Bool = state.withLock { s in
                    if s.running < running { s.running += 1; return true }
                    s.waiters.append(c)
                    return false
                }
                if startNow { c.resume() }
            }
        }
    }

    private func release() {
        let next: CheckedContinuation<Void, Never>? = state.withLock { s in
            if s.waiters.isEmpty { s.running -= 1; return nil }
            return s.waiters.removeFirst()  // its slot passes on: running stays the same
        }
        next?.resume()
    }
}
