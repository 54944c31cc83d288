import Foundation

// Issue 13: what Kiln keeps secret for a project, a group or a cell, as the API takes it and
// as an agent receives it for one build. The values live only sealed in etcd
// (`/kiln/secrets/…`, the Sealing module's `SecretStore`); the API takes them and never
// shows them again; an agent gets them for the build it holds, from a scheduler.

/// How an agent logs in to a project's git server. Never part of the repository URL.
public enum GitCredential: Codable, Sendable, Equatable {
    /// HTTPS: a user name and a token (a GitLab deploy token or project access token).
    case token(username: String, token: String)
    /// SSH: a deploy key (an OpenSSH private key, in PEM or OpenSSH's own format, as ssh-keygen writes it)
    /// and the server's pinned host keys, as known_hosts lines (`host ssh-ed25519 AAAA…`;
    /// `[host]:port` for another port). The fetch refuses a host key these lines do not hold.
    case sshKey(privateKey: String, knownHosts: String)

    /// What the logs may say of it: the kind and the user, never the secret.
    public var summary: String {
        switch self {
        case .token(let user, _): "an HTTPS token of user \(Validation.printable(user))"
        case .sshKey: "an SSH deploy key"
        }
    }
}

/// A login to one registry (`host[:port]`), for pulls of build and base images and pushes.
public struct RegistryLogin: Codable, Sendable, Equatable {
    public var host: String
    public var username: String
    public var password: String

    public init(host: String, username: String, password: String) {
        self.host = host
        self.username = username
        self.password = password
    }
}

/// One build secret as the compile step receives it.
public struct BuildSecret: Codable, Sendable, Equatable {
    /// An environment variable name (`[A-Z_][A-Z0-9_]*`).
    public var name: String
    public var value: String
    /// True: a file `/run/secrets/NAME` (mode 0400) instead of an environment variable.
    public var file: Bool
    /// For protected refs only: the scheduler gave it because the build's ref is protected;
    /// the agent still leaves it out when the build pins a commit its fetched ref does not hold.
    public var protectedOnly: Bool

    public init(name: String, value: String, file: Bool = false, protectedOnly: Bool = false) {
        self.name = name
        self.value = value
        self.file = file
        self.protectedOnly = protectedOnly
    }
}

/// Everything secret one build receives: the answer to the agent's
/// `POST /agent/v1/builds/{build}/secrets`, given only to the agent that holds the build's task.
/// The project's own values win over its group's of the same name (or registry host).
public struct BuildSecrets: Codable, Sendable, Equatable {
    public var git: GitCredential?
    public var registries: [RegistryLogin]
    public var env: [BuildSecret]
    /// Names of secrets left out because they are for protected refs only and this build's
    /// ref is not one (the agent says so in the log).
    public var withheld: [String]

    public init(git: GitCredential? = nil, registries: [RegistryLogin] = [], env: [BuildSecret] = [], withheld: [String] = []) {
        self.git = git
        self.registries = registries
        self.env = env
        self.withheld = withheld
    }

    public static let none = BuildSecrets()

    /// Every value a build's log must never show: the secrets' values, the token or key, the
    /// registry passwords.
    public var maskedValues: [String] {
        var values = env.map(\.value) + registries.map(\.password)
        switch git {
        case .token(_, let token): values.append(token)
        case .sshKey(let key, _): values.append(key)
        case nil: break
        }
        return values
    }

    /// The registry login for `host` (`host[:port]`, compared without case), if any.
    public func login(for host: String) -> RegistryLogin? {
        registries.first { $0.host.lowercased() == host.lowercased() }
    }
}

// MARK: - The API's bodies

/// `PUT /api/v1/projects/{name}/credentials/git`: either `username` and `token`, or
/// `sshKey` and `knownHosts`.
public struct GitCredentialRequest: Codable, Sendable, Equatable {
    public var username: String?
    public var token: String?
    public var sshKey: String?
    public var knownHosts: String?

    public init(username: String? = nil, token: String? = nil, sshKey: String? = nil, knownHosts: String? = nil) {
        self.username = username
        self.token = token
        self.sshKey = sshKey
        self.knownHosts = knownHosts
    }

    /// The credential it asks for; throws `KilnError.invalid` saying what is missing or wrong.
    public func credential() throws -> GitCredential {
        switch (username, token, sshKey, knownHosts) {
        case (let user?, let token?, nil, nil):
            try SecretRules.check(user, what: "username", minimum: 1, maximum: 256, visible: true)
            try SecretRules.check(token, what: "token", visible: true)
            return .token(username: user, token: token)
        case (nil, nil, let key?, let hosts?):
            try SecretRules.check(key, what: "sshKey", maximum: 16 << 10)
            guard key.contains("-----BEGIN ") && key.contains(" PRIVATE KEY-----") else {
                throw KilnError.invalid("sshKey is not a private key: give the deploy key's private part, the whole file ssh-keygen wrote (its first line names an OPENSSH PRIVATE KEY)")
            }
            guard !key.contains("ENCRYPTED") && !key.contains("Proc-Type: 4,ENCRYPTED") else {
                throw KilnError.invalid("sshKey is protected by a passphrase: make a deploy key without one (ssh-keygen -N '') for Kiln")
            }
            _ = try KnownHosts.parse(hosts)
            return .sshKey(privateKey: key, knownHosts: hosts)
        default:
            throw KilnError.invalid("give either username and token (HTTPS: a deploy token or project access token) or sshKey and knownHosts (SSH: a deploy key and the server's host key line, from `ssh-keyscan -t ed25519 HOST`)")
        }
    }
}

/// `PUT …/secrets/{NAME}`.
public struct SecretRequest: Codable, Sendable, Equatable {
    public var value: String
    /// Only builds of protected refs (the default branch and `Project.protectedRefs`) get it.
    public var protectedOnly: Bool?
    /// A file `/run/secrets/NAME` instead of an environment variable.
    public var file: Bool?

    public init(value: String, protectedOnly: Bool? = nil, file: Bool? = nil) {
        self.value = value
        self.protectedOnly = protectedOnly
        self.file = file
    }

    public func validate(name: String) throws {
        try SecretRules.name(name)
        try SecretRules.check(value, what: "the value of \(name)")
    }
}

/// `PUT …/credentials/registry/{host}`.
public struct RegistryCredentialRequest: Codable, Sendable, Equatable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    public func validate(host: String) throws {
        try SecretRules.registryHost(host)
        try SecretRules.check(username, what: "username", minimum: 1, maximum: 256, visible: true)
        try SecretRules.check(password, what: "password", visible: true)
    }
}

/// What the API shows of one stored secret or credential: never its value.
public struct SecretInfo: Codable, Sendable, Equatable {
    /// `env` (a build secret), `git`, `registry` or `webhook`.
    public var kind: String
    /// The secret's name, the registry's host, or `git`.
    public var name: String
    /// `project` or `group`: where it is set (a project's listing shows its group's too).
    public var scope: String
    public var protectedOnly: Bool?
    public var file: Bool?
    /// For `git`: `token` or `sshKey`; for `registry`: the user name. Never the secret.
    public var detail: String?
    public var updatedAt: Date?
    public var updatedBy: String?

    public init(kind: String, name: String, scope: String, protectedOnly: Bool? = nil, file: Bool? = nil, detail: String? = nil, updatedAt: Date? = nil, updatedBy: String? = nil) {
        self.kind = kind
        self.name = name
        self.scope = scope
        self.protectedOnly = protectedOnly
        self.file = file
        self.detail = detail
        self.updatedAt = updatedAt
        self.updatedBy = updatedBy
    }
}

/// The rules every secret value and name follows.
public enum SecretRules {
    /// Shorter values are refused: masking a short value in a log garbles every line that
    /// happens to hold it (GitLab masks variables of 8 characters or more).
    public static let minimumLength = 8
    public static let maximumLength = 64 << 10

    /// Names are environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, at most 128.
    public static func name(_ name: String) throws {
        let b = Array(name.utf8)
        guard (1...128).contains(b.count), !Validation.isDigit(b[0]), b.allSatisfy(Validation.isWord) else {
            throw KilnError.invalid("secret name '\(Validation.printable(name))' is not an environment variable name: use letters, digits and '_', not starting with a digit (for example NPM_TOKEN)")
        }
        if ["PATH", "HOME", "HOSTNAME", "USER", "SHELL", "PWD", "LD_PRELOAD", "LD_LIBRARY_PATH"].contains(name.uppercased()) {
            throw KilnError.invalid("secret name \(name) would replace a variable the build's shell needs: choose another name")
        }
    }

    /// A value: `minimum` to `maximum` bytes, no NUL; `visible`: printable ASCII without spaces.
    public static func check(_ value: String, what: String, minimum: Int = minimumLength, maximum: Int = maximumLength, visible: Bool = false) throws {
        let n = value.utf8.count
        if n < minimum {
            throw KilnError.invalid(minimum <= 1 ? "\(what) is empty" : "\(what) is \(n == 0 ? "empty" : "too short (\(n) characters)"): a secret needs at least \(minimum) characters, or masking it would garble the build log")
        }
        if n > maximum { throw KilnError.invalid("\(what) is longer than \(maximum) bytes") }
        if value.utf8.contains(0) { throw KilnError.invalid("\(what) contains a NUL byte") }
        if visible, value.utf8.contains(where: { $0 < 0x21 || $0 > 0x7e }) {
            throw KilnError.invalid("\(what) must be visible ASCII characters without spaces")
        }
    }

    /// A registry host as images name it: `host` or `host:port`, lowercase letters, digits,
    /// '.', '-' and one ':'.
    public static func registryHost(_ host: String) throws {
        let parts = host.split(separator: ":", omittingEmptySubsequences: false)
        let okHost = parts.count >= 1 && !parts[0].isEmpty && parts[0].utf8.allSatisfy { Validation.isLower($0) || Validation.isDigit($0) || $0 == 46 || $0 == 45 }
        let okPort = parts.count == 1 || (parts.count == 2 && UInt16(parts[1]) != nil)
        guard host.utf8.count <= 253, okHost, okPort else {
            throw KilnError.invalid("registry host '\(Validation.printable(host))' is not a host name with an optional port, as an image names it (registry.example.com, registry.example.com:5000)")
        }
    }
}

/// known_hosts lines as a git credential pins them: `host[,host…] keytype base64key`, where a
/// host is `name` or `[name]:port`. Hashed host names (`|1|…`) and markers are refused: the
/// pin must name its host in clear so an operator can read what is trusted.
public struct KnownHosts: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var hosts: [String]
        public var keyType: String
        /// The key blob (the base64 decoded), as the server presents it in the SSH handshake.
        public var key: [UInt8]
    }

    public var entries: [Entry]

    public static func parse(_ text: String) throws -> KnownHosts {
        var entries: [Entry] = []
        for raw in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let f = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard f.count >= 3, !f[0].hasPrefix("@"), !f[0].hasPrefix("|"),
                  f[1].hasPrefix("ssh-") || f[1].hasPrefix("ecdsa-") || f[1].hasPrefix("sk-"),
                  let key = Data(base64Encoded: f[2]), !key.isEmpty else {
                throw KilnError.invalid("knownHosts line '\(Validation.printable(String(line.prefix(60))))' is not a known_hosts line: give `host keytype base64key` as `ssh-keyscan -t ed25519 HOST` prints it (no hashed names or markers)")
            }
            entries.append(Entry(hosts: f[0].split(separator: ",").map { $0.lowercased() }, keyType: f[1], key: Array(key)))
        }
        guard !entries.isEmpty else {
            throw KilnError.invalid("knownHosts is empty: pin the server's host key, as `ssh-keyscan -t ed25519 HOST` prints it")
        }
        return KnownHosts(entries: entries)
    }

    /// The entries for `host` on `port` (22 matches the bare name; another port `[host]:port`).
    public func entries(host: String, port: Int) -> [Entry] {
        let h = host.lowercased()
        let name = port == 22 ? h : "[\(h)]:\(port)"
        return entries.filter { $0.hosts.contains(name) || (port == 22 && $0.hosts.contains("[\(h)]:22")) }
    }
}

/// How Kiln logs in to a cell (`PUT /api/v1/cells/{name}/credentials`), kept sealed at
/// `/kiln/secrets/cells/{name}`: a bearer token or a client certificate and its key, and the
/// CA (PEM) that the server's certificate must chain to. A Kubernetes cell's API server takes
/// either; a local cell at an `https://` endpoint (a Docker Engine API behind a TLS proxy,
/// docs/cells.md) takes the client certificate and its proxy's CA.
public struct CellCredential: Codable, Sendable, Equatable {
    public var token: String?
    public var clientCertificate: String?
    public var clientKey: String?
    public var certificateAuthority: String

    public init(token: String? = nil, clientCertificate: String? = nil, clientKey: String? = nil, certificateAuthority: String) {
        self.token = token
        self.clientCertificate = clientCertificate
        self.clientKey = clientKey
        self.certificateAuthority = certificateAuthority
    }

    public func validate() throws {
        switch (token, clientCertificate, clientKey) {
        case (let t?, nil, nil):
            try SecretRules.check(t, what: "token", visible: true)
        case (nil, let cert?, let key?):
            guard cert.contains("-----BEGIN CERTIFICATE-----") else { throw KilnError.invalid("clientCertificate is not a PEM certificate") }
            guard key.contains("-----BEGIN ") && key.contains("PRIVATE KEY-----") else { throw KilnError.invalid("clientKey is not a PEM private key") }
        default:
            throw KilnError.invalid("give either token (a service account's bearer token) or clientCertificate and clientKey (PEM), and certificateAuthority (the cluster's CA, PEM)")
        }
        guard certificateAuthority.contains("-----BEGIN CERTIFICATE-----") else {
            throw KilnError.invalid("certificateAuthority is not a PEM certificate: give the cluster's CA (the certificate-authority-data of a kubeconfig, decoded)")
        }
    }
}
