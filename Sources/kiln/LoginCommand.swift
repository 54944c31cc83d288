import ArgumentParser
import Foundation
import KilnClient
import KilnCore

/// Where the CLI keeps its API tokens: `$XDG_CONFIG_HOME/kiln/credentials` (else
/// `~/.config/kiln/credentials`), mode 0600 in a folder of mode 0700, as JSON: one token per
/// API URL, so one person can log in to several farms.
enum CLICredentials {
    static var path: String {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()) + "/.config"
        return base + "/kiln/credentials"
    }

    /// KILN_TOKEN, else the stored token for `api`, else nil (the API then answers 401 with
    /// what to do).
    static func token(for api: String) throws -> String? {
        if let token = ProcessInfo.processInfo.environment["KILN_TOKEN"], !token.isEmpty { return token }
        return try stored()[normalized(api)]
    }

    static func stored() throws -> [String: String] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        let text = try CredentialFile.read(path)
        guard let map = try? JSONDecoder().decode([String: String].self, from: Data(text.utf8)) else {
            throw ValidationError("\(path) is not what `kiln login` writes: remove it and log in again")
        }
        return map
    }

    static func store(_ token: String?, for api: String) throws {
        var map = try stored()
        map[normalized(api)] = token
        let data = try JSONEncoder().encode(map)
        try CredentialFile.write(String(decoding: data, as: UTF8.self), to: path)
    }

    static func normalized(_ api: String) -> String {
        var a = api
        while a.hasSuffix("/") { a.removeLast() }
        return a
    }
}

/// Reads a secret from standard input (one line), without echo when it is a terminal.
func readSecret(prompt: String) throws -> String {
    if isatty(0) != 0 {
        FileHandle.standardError.write(Data(prompt.utf8))
        var old = termios()
        tcgetattr(0, &old)
        var quiet = old
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(0, TCSANOW, &quiet)
        defer {
            tcsetattr(0, TCSANOW, &old)
            FileHandle.standardError.write(Data("\n".utf8))
        }
        return readLine(strippingNewline: true) ?? ""
    }
    return readLine(strippingNewline: true) ?? ""
}

struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Log in: make an API token and keep it for the other commands.",
        discussion: """
        With --user, asks for the password (or reads it from standard input), makes a personal \
        API token (POST /api/v1/tokens) and stores it in ~/.config/kiln/credentials (mode \
        0600), per API URL. With --token-file, stores a token you already have (the first \
        admin's, which `kiln up` keeps in <data-dir>/credentials/admin-token). Every other \
        command then sends it; KILN_TOKEN overrides it.

        Examples:
          kiln login --user alice
          kiln login --token-file kiln-data/credentials/admin-token
          kiln login --logout
        """)
    @OptionGroup var api: APIOptions
    @Option(name: .long, help: ArgumentHelp("Your user name.", valueName: "name")) var user: String?
    @Option(name: .long, help: ArgumentHelp("A file (mode 0600) holding an API token to use as is.", valueName: "file")) var tokenFile: String?
    @Option(name: .long, help: ArgumentHelp("Days until the new token expires (1 to 3650).", valueName: "days")) var expiresInDays: Int = 90
    @Flag(name: .long, help: "Forget the stored token for this API.") var logout = false

    func validate() throws {
        if !logout && (user == nil) == (tokenFile == nil) { throw ValidationError("give --user NAME (asks for the password) or --token-file FILE") }
    }

    func run() async throws {
        if logout {
            try CLICredentials.store(nil, for: api.api)
            print("logged out of \(api.api)")
            return
        }
        let token: String
        if let tokenFile {
            token = try CredentialFile.read(tokenFile)
        } else {
            let password = try readSecret(prompt: "password for \(user!) at \(api.api): ")
            let host = ProcessInfo.processInfo.hostName
            let created = try await APIClient(api.api, user: user!, password: password, ca: try api.ca.trusted())
                .post("/api/v1/tokens", body: NewToken(name: "kiln login on \(host)", expiresInDays: expiresInDays), as: CreatedToken.self)
            token = created.token
        }
        let me = try await APIClient(api.api, token: token, ca: try api.ca.trusted()).get("/api/v1/users/me", as: UserView.self)
        try CLICredentials.store(token, for: api.api)
        print("logged in to \(api.api) as \(me.name)\(me.admin ? " (admin)" : ""); token kept in \(CLICredentials.path)")
    }
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user", abstract: "Users (admins only): add, list; `kiln user me` shows who you are.",
                                                    subcommands: [Add.self, List.self, Me.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a user; asks for their first password (or reads it from standard input).",
                                                        discussion: "Example: kiln user add alice   (then alice runs `kiln login --user alice`)")
        @OptionGroup var api: APIOptions
        @Argument(help: "User name: lowercase letters, digits and '-'.") var name: String
        @Flag(name: .long, help: "Make the user an admin (users, cells, agents; sees everything).") var admin = false
        @Flag(name: .long, help: "No password: the user logs in only with tokens an admin makes for them.") var noPassword = false

        func run() async throws {
            let password = noPassword ? nil : try readSecret(prompt: "password for \(name) (12 characters or more): ")
            let user = try await api.client().post("/api/v1/users", body: NewUser(name: name, password: password, admin: admin), as: UserView.self)
            print("user \(user.name) added\(user.admin ? " (admin)" : "")")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List users.")
        @OptionGroup var api: APIOptions
        func run() async throws {
            for u in try await api.client().get("/api/v1/users", as: [UserView].self) {
                print("\(u.name)\(u.admin ? "  admin" : "")\(u.hasPassword ? "" : "  (tokens only)")")
            }
        }
    }

    struct Me: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Who the stored token belongs to.")
        @OptionGroup var api: APIOptions
        func run() async throws {
            let me = try await api.client().get("/api/v1/users/me", as: UserView.self)
            print("\(me.name)\(me.admin ? " (admin)" : "")")
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "Your personal API tokens: create, list, revoke.",
                                                    subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a token and print it (shown this once): for scripts, CI, podman login.",
                                                        discussion: "Example: kiln token create ci --expires-in-days 30")
        @OptionGroup var api: APIOptions
        @Argument(help: "A name to recognise it by.") var name: String
        @Option(name: .long, help: ArgumentHelp("Days until it expires (1 to 3650).", valueName: "days")) var expiresInDays: Int = 90
        func run() async throws {
            let t = try await api.client().post("/api/v1/tokens", body: NewToken(name: name, expiresInDays: expiresInDays), as: CreatedToken.self)
            print(t.token)
            FileHandle.standardError.write(Data("token \(t.id) made; it is not shown again\n".utf8))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your tokens (never the tokens themselves).")
        @OptionGroup var api: APIOptions
        func run() async throws {
            let now = Date()
            for t in try await api.client().get("/api/v1/tokens", as: [APIToken].self) {
                let state = t.revokedAt != nil ? "revoked" : (t.isValid(at: now) ? "valid until \(t.expiresAt.map { "\($0)" } ?? "revoked")" : "expired")
                print("\(t.id)  \(t.name)  \(state)")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke one of your tokens by its id (`kiln token list`).")
        @OptionGroup var api: APIOptions
        @Argument(help: "Token id.") var id: String
        func run() async throws {
            _ = try await api.client().raw("DELETE", "/api/v1/tokens/\(id)")
            print("token \(id) revoked")
        }
    }
}

struct MembersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "members", abstract: "Members of a project, app or group: add (or change a role), list, remove.",
        discussion: """
        Examples:
          kiln members add project demo alice developer
          kiln members list group team-a
          kiln members remove app shop bob
        Roles, and what each may do: kiln help roles
        """,
        subcommands: [Add.self, List.self, Remove.self])

    enum Kind: String, ExpressibleByArgument, CaseIterable { case project, app, group }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Give a user a role on a resource (masters and owners; only owners touch owners).")
        @OptionGroup var api: APIOptions
        @Argument(help: "project, app or group.") var kind: Kind
        @Argument(help: "Its name.") var name: String
        @Argument(help: "The user.") var user: String
        @Argument(help: "guest, reporter, developer, master or owner.") var role: String
        func run() async throws {
            let data = try KilnJSON.encoder().encode(MemberRequest(role: role))
            _ = try await api.client().raw("PUT", "/api/v1/\(kind.rawValue)s/\(name)/members/\(user)", body: data)
            print("\(user) is \(role) of \(kind.rawValue) \(name)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a resource's members.")
        @OptionGroup var api: APIOptions
        @Argument(help: "project, app or group.") var kind: Kind
        @Argument(help: "Its name.") var name: String
        func run() async throws {
            for m in try await api.client().get("/api/v1/\(kind.rawValue)s/\(name)/members", as: [Member].self) { print("\(m.user)  \(m.role.rawValue)") }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a member (or leave, naming yourself); the last owner stays.")
        @OptionGroup var api: APIOptions
        @Argument(help: "project, app or group.") var kind: Kind
        @Argument(help: "Its name.") var name: String
        @Argument(help: "The user.") var user: String
        func run() async throws {
            _ = try await api.client().raw("DELETE", "/api/v1/\(kind.rawValue)s/\(name)/members/\(user)")
            print("\(user) removed from \(kind.rawValue) \(name)")
        }
    }
}

struct RolesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "roles", abstract: "What each role may do on a project, app or group.",
        discussion: """
        \(Permission.table(covers: false))

        \(Permission.allCases.map { "\($0.rawValue): \($0.summary)" }.joined(separator: "\n"))

        Your role on a project is the higher of your own and your role on the project's group; \
        on an app, the higher of your own and your role on the project that owns the app (the \
        one whose pipeline first deployed it). A resource you have no role on does not exist \
        for you. Admins may do everything, and alone manage users, cells and agents. The whole \
        table, with every route: docs/roles.md.
        """)
    func run() throws {
        print(Permission.table)
    }
}
