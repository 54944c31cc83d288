import ArgumentParser
import Foundation
import KilnClient
import KilnCore

/// `kiln secret set|list|rm`: the build secrets of a project or group (docs/secrets.md).
struct SecretCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Set, list and remove build secrets (tokens a build needs, kept sealed).",
        discussion: """
        A build secret is given to the compile step of every build of the project (and of \
        every project of the group) as an environment variable, or with --as-file as the file \
        /run/secrets/NAME; never on the command line, never to the Dockerfile's RUN steps. Its \
        value is masked in the build log. With --protected-only only builds of protected refs \
        (the default branch and the project's protectedRefs) get it; other builds are told it \
        was withheld. A project's secret replaces its group's of the same name.

        Values are write-only: nobody reads them back, `kiln secret list` shows names only. \
        The value comes from standard input or --from-file, never from an option, so it stays \
        out of your shell's history. Masters and owners set and remove; developers list.

        Examples:
          kiln secret set NPM_TOKEN --project shop < npm-token.txt
          printf %s "$MAVEN_PASSWORD" | kiln secret set MAVEN_PASSWORD --group team --protected-only
          kiln secret set SETTINGS_XML --project shop --as-file --from-file ~/.m2/settings-ci.xml
          kiln secret list --project shop
          kiln secret rm NPM_TOKEN --project shop
        """,
        subcommands: [Set.self, List.self, Remove.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set a build secret; the value from standard input or --from-file.",
            discussion: "Example: kiln secret set NPM_TOKEN --project shop < npm-token.txt")
        @OptionGroup var api: APIOptions
        @Argument(help: "Its name, as the environment variable it becomes (letters, digits, '_'; for example NPM_TOKEN).") var name: String
        @OptionGroup var owner: SecretOwner
        @Flag(name: .long, help: "Only builds of protected refs get it (the default branch and the project's protectedRefs).") var protectedOnly = false
        @Flag(name: .long, help: "Give it as the file /run/secrets/NAME (mode 0400) instead of an environment variable.") var asFile = false
        @Option(name: .long, help: ArgumentHelp("Read the value from this file (mode 0600) instead of standard input.", valueName: "file"))
        var fromFile: String?

        func validate() throws {
            do { try SecretRules.name(name) } catch { throw ValidationError("\(error)") }
        }

        func run() async throws {
            let value = try SecretInput.read(file: fromFile, what: "the value of \(name)")
            let body = SecretRequest(value: value, protectedOnly: protectedOnly, file: asFile)
            let info = try await api.client().put("\(owner.path)/secrets/\(name)", body: body, as: SecretInfo.self)
            say("secret \(info.name) of \(owner.description) set\(protectedOnly ? " (protected refs only)" : "")\(asFile ? " (as /run/secrets/\(info.name))" : "")")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the secrets and credentials of a project or group: names, never values.",
            discussion: "A project's list shows its group's too (scope group).")
        @OptionGroup var api: APIOptions
        @OptionGroup var owner: SecretOwner

        func run() async throws {
            let infos = try await api.client().get("\(owner.path)/secrets", as: [SecretInfo].self)
            if api.json { Show.printJSON(infos); return }
            if infos.isEmpty { say("\(owner.description) has no secrets or credentials: set one with `kiln secret set NAME \(owner.option)`"); return }
            for line in SecretInput.table(infos) { say(line) }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a build secret; the next builds no longer get it.")
        @OptionGroup var api: APIOptions
        @Argument(help: "Its name.") var name: String
        @OptionGroup var owner: SecretOwner

        func run() async throws {
            _ = try await api.client().raw("DELETE", "\(owner.path)/secrets/\(name)")
            say("secret \(name) of \(owner.description) removed")
        }
    }
}

/// `--project P` or `--group G`: whose secrets.
struct SecretOwner: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The project they belong to.", valueName: "name")) var project: String?
    @Option(name: .long, help: ArgumentHelp("The group they belong to (its projects inherit them).", valueName: "name")) var group: String?

    func validate() throws {
        guard (project == nil) != (group == nil) else { throw ValidationError("give either --project NAME or --group NAME") }
    }

    var path: String { project.map { "/api/v1/projects/\($0)" } ?? "/api/v1/groups/\(group!)" }
    var description: String { project.map { "project \($0)" } ?? "group \(group!)" }
    var option: String { project.map { "--project \($0)" } ?? "--group \(group!)" }
}

/// Reading secret values and printing what the API shows of them.
enum SecretInput {
    /// The value from `file` (which must be the user's, mode 0600: `CredentialFile`), else all
    /// of standard input (a terminal is asked for one line, without echo). Trailing line ends
    /// are dropped; an empty value is an error that says how to give one.
    static func read(file: String?, what: String) throws -> String {
        let value: String
        if let file {
            do { value = try CredentialFile.read(file) } catch { throw ValidationError("\(error)") }
        } else if isatty(0) != 0 {
            value = try readSecret(prompt: "\(what) (not shown): ")
        } else {
            var text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
            value = text
        }
        guard !value.isEmpty else {
            throw ValidationError("\(what) is empty: give it on standard input (`kiln … < file`, or `printf %s \"$VALUE\" | kiln …`) or with the file option")
        }
        return value
    }

    /// A file that is not secret (known_hosts lines, a CA certificate): read as it is.
    static func readPlain(_ path: String, what: String) throws -> String {
        do { return try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ValidationError("cannot read \(what) from \(path): \(error.localizedDescription)")
        }
    }

    static func table(_ infos: [SecretInfo]) -> [String] {
        infos.map { i in
            var notes: [String] = []
            if let d = i.detail { notes.append(i.kind == "registry" ? "user \(d)" : d) }
            if i.protectedOnly == true { notes.append("protected refs only") }
            if i.file == true { notes.append("as /run/secrets/\(i.name)") }
            if let at = i.updatedAt { notes.append("set \(KilnJSON.formatDate(at))\(i.updatedBy.map { " by \($0)" } ?? "")") }
            return [i.kind.padding(toLength: 9, withPad: " ", startingAt: 0), i.name.padding(toLength: 28, withPad: " ", startingAt: 0),
                    i.scope.padding(toLength: 8, withPad: " ", startingAt: 0), notes.joined(separator: ", ")].joined(separator: " ")
        }
    }
}

extension APIClient {
    /// `PUT path` with `body` as JSON, the answer decoded as `T`.
    func put<T: Decodable>(_ path: String, body: some Encodable, as: T.Type) async throws -> T {
        let data = try await raw("PUT", path, body: try KilnJSON.encoder().encode(body))
        do { return try KilnJSON.decoder().decode(T.self, from: data) } catch {
            throw CLIFailure(description: "the API answered something this kiln cannot read (\(error)); is it the same version?")
        }
    }
}

/// A command that failed for a reason it states (printed as `Error: …`).
struct CLIFailure: Error, CustomStringConvertible {
    let description: String
}
