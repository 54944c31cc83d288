import Foundation
import Sealing

/// The secrets key file of a farm on one machine (`kiln up`, the test farms):
/// `<credentials>/secrets-key`, mode 0600, given to every scheduler as `--secrets-key-file`
/// and to no agent (docs/secrets.md).
public enum LocalSecretsKey {
    public static let fileName = "secrets-key"

    /// The file's path in `credentialsDir`, made with one new key when it is missing (kept as
    /// it is otherwise: the farm's secrets stay sealed under it from one start to the next).
    @discardableResult
    public static func ensure(credentialsDir: URL) throws -> String {
        let path = credentialsDir.appendingPathComponent(fileName).path
        try SecretsKeyring.create(at: path)
        return path
    }
}
