import ArgumentParser
import Foundation
import KilnClient
import KilnCore

/// `kiln credential set|rm git|registry`: how builds log in to a project's git server and to
/// registries (docs/secrets.md).
struct CredentialCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credential",
        abstract: "Set and remove git and registry credentials of projects and groups.",
        discussion: """
        git: how agents fetch a private repository. Over HTTPS a user name and a token (a \
        GitLab deploy token or project access token, read_repository); over SSH a deploy key \
        (without a passphrase) and the server's host key, pinned: an unknown or changed host \
        key fails the fetch. Never put a credential in the repository URL: the API refuses it.

        registry: a login to another registry (host[:port]), for pulling the build image and \
        the Dockerfile's base images from it and for pushing to the project's pushTo \
        repositories there. A project's login replaces its group's for the same host.

        Secrets are read from standard input or a file (mode 0600), never from an option. \
        They are sealed in etcd and never shown again (`kiln secret list` shows names). \
        Masters and owners set and remove them.

        Examples:
          kiln credential set git --project shop --username gitlab+deploy-token-1 < token.txt
          ssh-keyscan -t ed25519 gitlab.example.com > known_hosts
          kiln credential set git --project shop --ssh-key-file deploy_key --known-hosts-file known_hosts
          kiln credential set registry registry.example.com --group team --username ci < password.txt
          kiln credential rm git --project shop
          kiln credential rm registry registry.example.com --group team
        """,
        subcommands: [Set.self, Remove.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a git or registry credential.", subcommands: [Git.self, Registry.self])

        struct Git: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Set a project's git credential: a user name and token (HTTPS), or a deploy key and the host key (SSH).",
                discussion: """
                HTTPS: --username, and the token from standard input or --token-file.
                SSH: --ssh-key-file (the deploy key's private part, mode 0600, no passphrase) and \
                --known-hosts-file (the server's line, as `ssh-keyscan -t ed25519 HOST` prints it; \
                `[host]:port` for another port than 22).
                """)
            @OptionGroup var api: APIOptions
            @Option(name: .long, help: ArgumentHelp("The project.", valueName: "name")) var project: String
            @Option(name: .long, help: ArgumentHelp("HTTPS: the user name that goes with the token (a deploy token's user name; oauth2 for a project access token).", valueName: "user"))
            var username: String?
            @Option(name: .long, help: ArgumentHelp("HTTPS: read the token from this file (mode 0600) instead of standard input.", valueName: "file"))
            var tokenFile: String?
            @Option(name: .long, help: ArgumentHelp("SSH: the deploy key's private key file (mode 0600).", valueName: "file")) var sshKeyFile: String?
            @Option(name: .long, help: ArgumentHelp("SSH: known_hosts lines pinning the server's host key.", valueName: "file")) var knownHostsFile: String?

            func validate() throws {
                let https = username != nil || tokenFile != nil, ssh = sshKeyFile != nil || knownHostsFile != nil
                guard https != ssh else { throw ValidationError("give --username (HTTPS, the token on standard input or --token-file) or --ssh-key-file and --known-hosts-file (SSH), not both") }
                if https, username == nil { throw ValidationError("--token-file needs --username (the user the token belongs to)") }
                if ssh, sshKeyFile == nil || knownHostsFile == nil { throw ValidationError("SSH needs both --ssh-key-file and --known-hosts-file (pin the server's host key: ssh-keyscan -t ed25519 HOST)") }
            }

            func run() async throws {
                let request: GitCredentialRequest
                if let username {
                    request = GitCredentialRequest(username: username, token: try SecretInput.read(file: tokenFile, what: "the token of \(username)"))
                } else {
                    request = GitCredentialRequest(sshKey: try SecretInput.read(file: sshKeyFile, what: "the deploy key") + "\n",
                                                   knownHosts: try SecretInput.readPlain(knownHostsFile!, what: "the known hosts"))
                }
                do { _ = try request.credential() } catch { throw ValidationError("\(error)") }
                let info = try await api.client().put("/api/v1/projects/\(project)/credentials/git", body: request, as: SecretInfo.self)
                say("git credential of project \(project) set (\(info.detail ?? "sealed"))")
            }
        }

        struct Registry: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Set a project's or group's login to a registry; the password from standard input or --password-file.",
                discussion: "Example: kiln credential set registry registry.example.com:5000 --project shop --username ci < password.txt")
            @OptionGroup var api: APIOptions
            @Argument(help: "The registry as images name it: host or host:port.") var host: String
            @OptionGroup var owner: SecretOwner
            @Option(name: .long, help: ArgumentHelp("The user name.", valueName: "user")) var username: String
            @Option(name: .long, help: ArgumentHelp("Read the password from this file (mode 0600) instead of standard input.", valueName: "file"))
            var passwordFile: String?

            func validate() throws {
                do { try SecretRules.registryHost(host) } catch { throw ValidationError("\(error)") }
            }

            func run() async throws {
                let body = RegistryCredentialRequest(username: username, password: try SecretInput.read(file: passwordFile, what: "the password of \(username) at \(host)"))
                _ = try await api.client().put("\(owner.path)/credentials/registry/\(host)", body: body, as: SecretInfo.self)
                say("registry credential of \(owner.description) for \(host) set (user \(username))")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a git or registry credential.", subcommands: [Git.self, Registry.self])

        struct Git: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove a project's git credential: its next fetch goes without one (and fails if the repository is private).")
            @OptionGroup var api: APIOptions
            @Option(name: .long, help: ArgumentHelp("The project.", valueName: "name")) var project: String

            func run() async throws {
                _ = try await api.client().raw("DELETE", "/api/v1/projects/\(project)/credentials/git")
                say("git credential of project \(project) removed")
            }
        }

        struct Registry: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove a project's or group's login to a registry.")
            @OptionGroup var api: APIOptions
            @Argument(help: "The registry: host or host:port.") var host: String
            @OptionGroup var owner: SecretOwner

            func run() async throws {
                _ = try await api.client().raw("DELETE", "\(owner.path)/credentials/registry/\(host)")
                say("registry credential of \(owner.description) for \(host) removed")
            }
        }
    }
}
