import DockerAPI
import KilnCore

extension RegistryCredentials {
    /// A machine's registry credentials from its `NAME:TOKEN` file (mode 0600): DockerAPI's
    /// value, read by KilnCore's one rule for credential files.
    static func read(_ path: String) throws -> RegistryCredentials {
        let c = try UserPassword.read(path)
        return RegistryCredentials(user: c.user, password: c.password)
    }
}
