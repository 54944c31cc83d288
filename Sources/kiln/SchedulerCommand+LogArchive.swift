import ArgumentParser
import Foundation
import KilnCore
import Logging
import Scheduler

/// `kiln scheduler --log-archive`: a folder (the default, `<data-dir>/log-archive`), or the
/// farm's registry (`registry`, `registry:REPO`; docs/logs.md).
extension SchedulerCommand {
    enum LogArchiveChoice: Equatable {
        case folder(URL)
        case registry(repository: String)
    }

    /// What `--log-archive` names: exactly `registry` or `registry:REPO` is the registry, any
    /// other value a folder (a folder called registry is `./registry`).
    var logArchiveChoice: LogArchiveChoice {
        guard let logArchive else { return .folder(logArchiveFolder) }
        if logArchive == "registry" { return .registry(repository: RegistryLogArchive.defaultRepository) }
        if logArchive.hasPrefix("registry:") { return .registry(repository: String(logArchive.dropFirst("registry:".count))) }
        return .folder(logArchiveFolder)
    }

    func validateLogArchive() throws {
        guard case .registry(let repository) = logArchiveChoice else { return }
        do { try RegistryLogArchive.checkRepository(repository) } catch { throw ValidationError("--log-archive \(logArchive ?? ""): \(error)") }
        guard registryAPI(ca: nil) != nil else {
            throw ValidationError("--log-archive registry keeps the logs in the farm's registry: say where its API is with --registry-url URL (or --registry HOST:PORT), or give --log-archive a folder")
        }
        guard registrySigningKey != nil else {
            throw ValidationError("--log-archive registry needs --registry-signing-key (the key whose certificate the registry trusts): the scheduler signs its own tokens for the archive's repository, which the token service grants to no one else")
        }
    }

    /// The archive `--log-archive` names; `tokens` is the token service's configuration
    /// (`--registry-signing-key`), which `validate()` made sure of for the registry.
    func makeLogArchive(tokens: RegistryTokenService.Configuration?, logger: Logger) throws -> any LogArchive {
        switch logArchiveChoice {
        case .registry(let repository):
            guard let api = registryAPI(ca: try ca.trusted()), let tokens else { throw ValidationError("--log-archive registry needs --registry-url and --registry-signing-key") }
            let archive = try RegistryLogArchive(registry: api, tokens: tokens, repository: repository)
            logger.notice("\(archive)")
            return archive
        case .folder(let folder):
            do {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                // Not a reason to refuse the start: logs stay in etcd until the folder can be written.
                logger.warning("the log archive's folder \(folder.path) cannot be made (\(error)): ended builds' logs stay in etcd until it can (docs/logs.md)")
            }
            if let warning = HostReach.logArchiveFolderWarning(path: folder.standardizedFileURL.path, etcd: etcd.etcd) { logger.warning("\(warning)") }
            return LocalLogArchive(directory: folder.standardizedFileURL)
        }
    }
}
