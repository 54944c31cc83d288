import Foundation

/// `POST /api/v1/admin/secrets/reseal` (admins): what the scheduler did when it sealed every
/// secret again under the first key of its secrets key file (`kiln secrets reseal`,
/// `kiln secrets rotate`).
public struct SecretsResealReport: Codable, Sendable, Equatable {
    /// The id of the key that seals now: every value resealed is under it.
    public var key: String
    /// Values sealed again, by the id of the key they were under.
    public var resealed: [String: Int]
    /// Values that were under `key` already.
    public var current: Int
    /// Values that could not be sealed again, each `etcd key: why` (never a value).
    public var failed: [String]
    /// The ids of every key some value is sealed under after the reseal: `key`, and those of
    /// the values in `failed`. A key not listed here may leave the key file.
    public var keysInUse: [String]

    public init(key: String, resealed: [String: Int] = [:], current: Int = 0, failed: [String] = [], keysInUse: [String] = []) {
        self.key = key
        self.resealed = resealed
        self.current = current
        self.failed = failed
        self.keysInUse = keysInUse
    }
}
