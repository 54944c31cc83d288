import DockerAPI
import Foundation
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// How a build receives its secrets and what the agent says of them in the build's log
/// (docs/secrets.md): names only, every value masked from the moment it is known.
extension BuildRunner {
    /// The build's secrets, asked for once at the start of the fetch step: from the source
    /// (the schedulers), or none for an agent started without `--scheduler`. From here on the
    /// values are masked in the build's log and record. Throws `StepFailure` for the fetch step.
    func receiveSecrets(task: BuildTask, reporter: BuildReporter) async throws -> BuildSecrets {
        // The agent's own registry token is never given to a build; masked all the same.
        let own = configuration.registryCredentials.map { [$0.password] } ?? []
        guard let source = secretsSource else {
            reporter.mask(own)
            reporter.log("kiln: \(Self.noSecretsNote)")
            return .none
        }
        let secrets: BuildSecrets
        do {
            secrets = try await source.secrets(for: task.build)
        } catch let e as SecretsUnavailable {
            throw StepFailure(step: .fetch, message: e.message)
        }
        reporter.mask(secrets.maskedValues + own)
        for line in Self.secretsSummary(secrets, ref: task.ref) { reporter.log("kiln: \(line)") }
        return secrets
    }

    /// What an agent without `--scheduler` says at start and in each build's log.
    static let noSecretsNote = "this agent gives builds no secrets or credentials: it was started without --scheduler, so a project's git credential, registry logins and build secrets are not used (projects without them build as before)"

    /// The log lines that say what a build received: names, kinds, user names; never a value.
    static func secretsSummary(_ secrets: BuildSecrets, ref: String) -> [String] {
        var received: [String] = []
        if !secrets.env.isEmpty {
            received.append("build secrets " + secrets.env.map { Validation.printable($0.name) + ($0.file ? " (file)" : "") }.joined(separator: ", "))
        }
        if let git = secrets.git { received.append("git credential (\(git.summary))") }
        if !secrets.registries.isEmpty {
            received.append("registry logins " + secrets.registries.map { "\(Validation.printable($0.host)) (user \(Validation.printable($0.username)))" }.joined(separator: ", "))
        }
        var lines = ["secrets received: " + (received.isEmpty ? "none (the project and its group have no git credential, registry login or build secret)" : received.joined(separator: "; "))]
        if !secrets.withheld.isEmpty {
            lines.append("secrets withheld (for protected refs only, and \(Validation.printable(ref)) is not one): " + secrets.withheld.map(Validation.printable).joined(separator: ", "))
        }
        return lines
    }

    /// The environment variables and the `/run/secrets` mount of the compile step, after
    /// `CompileSecrets`' rules; what is left out is said in the log. The files are written into
    /// `secretFolder(task:)`, which the caller removes when the step ends, however it ends.
    func compileSecrets(task: BuildTask, secrets: BuildSecrets, reporter: BuildReporter) async throws -> (env: [String: String], bind: String?) {
        guard !secrets.env.isEmpty else { return ([:], nil) }
        let protectedBuild = secrets.env.contains(where: \.protectedOnly) ? try await isProtectedBuild(task: task) : false
        let plan = CompileSecrets.plan(secrets.env, protectedBuild: protectedBuild, ref: task.ref, pinnedCommit: task.commit.flatMap { $0.isEmpty ? nil : $0 })
        for (name, reason) in plan.leftOut { reporter.log("kiln: secret \(name) is not given to the build: \(reason)") }
        var bind: String?
        if !plan.files.isEmpty {
            let folder = secretFolder(task: task)
            let owner = try await secretFilesOwner(image: task.project.buildImage)
            do {
                try SecretFiles.write(plan.files, into: folder, owner: owner)
            } catch {
                throw StepFailure(step: .compile, message: "could not write the secret files for the build: \(error)")
            }
            bind = "\(folder.path):/run/secrets:ro,nosuid,nodev,noexec" + (owner == .engine ? ",U" : "")
        }
        let given = plan.given.map { "\($0.name) (\($0.file ? "/run/secrets/\($0.name)" : "environment"))" }
        if !given.isEmpty { reporter.log("kiln: secrets for the build command: " + given.joined(separator: ", ")) }
        return (plan.environment, bind)
    }

    /// `<data-dir>/secrets/<build>-<attempt>`: outside every checkout and cache.
    func secretFolder(task: BuildTask) -> URL {
        configuration.dataDir.appendingPathComponent("secrets/\(task.build)-\(task.attempt)")
    }

    /// Who the secret files belong to: the user the build image runs as, so that the build
    /// can read files of mode 0400 (`SecretFiles.Owner`).
    private func secretFilesOwner(image: String) async throws -> SecretFiles.Owner {
        let user: String
        do {
            user = try await docker.imageUser(image) ?? ""
        } catch let e as DockerError {
            throw StepFailure(step: .compile, message: "could not read the build image's user for the secret files: \(e)")
        }
        return SecretFiles.Owner(imageUser: user)
    }

    /// Pulls `image` with the project's `login` for its registry, then hides it from every
    /// other build: it gets a name nobody else knows (`localhost/kiln-pulled/<random>:1`) and
    /// loses its own, so a build of another project that names it finds it missing and must
    /// pull it with credentials of its own (the engine serves a name it has without asking the
    /// registry). Returns the private name, which the caller removes when the step ends.
    func pullWithLogin(_ image: String, login: RegistryLogin, project: String, step: StepName, reporter: BuildReporter) async throws -> String {
        let host = ImageRegistry.host(of: image)
        reporter.log("pulling \(image) with the project's login for \(host) (user \(login.username))")
        let credentials = RegistryCredentials(user: login.username, password: login.password)
        do {
            try await docker.pull(image, insecure: false, credentials: credentials) { reporter.output($0) }
            guard let id = try await docker.imageID(image) else {
                throw StepFailure(step: step, message: "\(image) is not in the container engine even after a pull")
            }
            let hidden = "localhost/kiln-pulled/\(UUID().uuidString.lowercased())"
            try await docker.tag(id, repository: hidden, tag: "1")
            do {
                try await docker.removeImage(image, force: false)
            } catch {
                await outlivingCancellation { [docker] in try? await docker.removeImage("\(hidden):1", force: false) }
                throw error
            }
            return "\(hidden):1"
        } catch let e as DockerError {
            throw StepFailure(step: step, message: "could not pull \(image) from \(host) with the login of user \(login.username): \(e.message)"
                + (Self.looksRefused(e.message) ? ". The registry refused that login: set the right one with `kiln credential set registry \(host) --project \(project)`" : ""))
        }
    }

    /// A registry's answer that reads as "wrong or missing credentials".
    static func looksRefused(_ message: String) -> Bool {
        let m = message.lowercased()
        return ["unauthorized", "authentication required", "denied", "401", "403", "invalid username/password"].contains { m.contains($0) }
    }
}

/// The files of one compile step's secrets (`/run/secrets/NAME` in the container): a folder
/// of mode 0700 with one file of mode 0400 per secret, both owned by the build's user, outside
/// every checkout; removed when the step ends (the caller's job) and by `prepare` at start.
enum SecretFiles {
    /// Who gets the files.
    enum Owner: Equatable {
        /// The agent (root, or the user a rootless engine maps the container's root to): the
        /// image runs as root.
        case agent
        /// This uid and gid: the image's `USER` is numeric (`1000`, `1000:1000`; group 0 when
        /// none is given, as the engine does for a uid the image does not list).
        case ids(uid: UInt32, gid: UInt32)
        /// A named user, whose uid only the image's /etc/passwd knows: left to the engine,
        /// podman's `U` mount option (dockerd has no such option and refuses the mount).
        case engine

        /// From an image's `User` (`""`, `root`, `0`, `1000`, `1000:50`, `maven`, `1000:staff`).
        init(imageUser user: String) {
            let parts = user.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let name = parts.first ?? ""
            let group = parts.count > 1 ? parts[1] : nil
            if (name.isEmpty || name == "root" || name == "0") && (group == nil || group == "0" || group == "root" || group == "") {
                self = .agent
            } else if let uid = UInt32(name), let gid = group.map({ UInt32($0) }) ?? 0 {
                self = .ids(uid: uid, gid: gid)
            } else {
                self = .engine
            }
        }
    }

    static func write(_ secrets: [BuildSecret], into folder: URL, owner: Owner) throws {
        let fm = FileManager.default
        try? fm.removeItem(at: folder)
        try fm.createDirectory(at: folder.deletingLastPathComponent(), withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        guard mkdir(folder.path, 0o700) == 0 else { throw SecretsUnavailable("cannot create \(folder.path): \(String(cString: strerror(errno)))") }
        var ids: (uid: UInt32, gid: UInt32)?
        if case .ids(let uid, let gid) = owner { ids = (uid, gid) }
        for secret in secrets {
            // The name passed SecretRules.name (CompileSecrets rule 1): no '/', no "..".
            let path = folder.appendingPathComponent(secret.name).path
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o400)
            guard fd >= 0 else { throw SecretsUnavailable("cannot create \(path): \(String(cString: strerror(errno)))") }
            let bytes = Array(secret.value.utf8)
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            let failed = written != bytes.count || (ids.map { fchown(fd, $0.uid, $0.gid) != 0 } ?? false)
            let reason = String(cString: strerror(errno))
            close(fd)
            if failed { throw SecretsUnavailable("cannot write \(path): \(reason)") }
        }
        if let ids, chown(folder.path, ids.uid, ids.gid) != 0 {
            throw SecretsUnavailable("cannot give \(folder.path) to uid \(ids.uid): \(String(cString: strerror(errno)))")
        }
    }
}
