import Foundation
import KilnCore

/// What a post-build plugin is called and which settings it takes: enough to refuse a bad
/// pipeline when a project is saved, before any build runs it. The plugins themselves
/// (`PostBuildPlugin`s, in the Deploy module) are bound to these names by the pipeline runner.
public struct PluginSpec: Sendable {
    public enum Kind: String, Sendable {
        case string, integer, number, boolean, stringList = "list of strings", stringMap = "object of strings"
    }

    public struct Setting: Sendable {
        public var name: String
        public var kind: Kind
        public var required: Bool
        public var help: String
        /// Allowed values of a string setting (empty: any).
        public var oneOf: [String] = []
        /// Allowed range of an integer or number setting.
        public var range: ClosedRange<Double>?
    }

    public var name: String
    public var summary: String
    public var settings: [Setting]
    /// Used when a step gives no `timeoutSeconds`.
    public var defaultTimeoutSeconds: Int

    public init(name: String, summary: String, settings: [Setting], defaultTimeoutSeconds: Int) {
        self.name = name
        self.summary = summary
        self.settings = settings
        self.defaultTimeoutSeconds = defaultTimeoutSeconds
    }
}

/// The built-in plugins, and the check of a project's pipeline against them.
public enum PluginCatalog {
    public static let builtIn: [PluginSpec] = [
        PluginSpec(name: "deploy", summary: "run the image as a new version of an app, in every cell, and wait until its instances pass their health check", settings: [
            .init(name: "app", kind: .string, required: true, help: "the app's name (lowercase letters, digits, '-')"),
            .init(name: "backend", kind: .string, required: false, help: "where to run it: local (containers through the Docker Engine API) or kubernetes", oneOf: ["local", "kubernetes"]),
            .init(name: "cells", kind: .stringList, required: false, help: "the cells to deploy in (default: all configured cells; at least two)"),
            .init(name: "port", kind: .integer, required: true, help: "the port the app listens on in its container", range: 1...65535),
            .init(name: "replicas", kind: .integer, required: false, help: "instances per cell (default: the previous version's, else 1)", range: 1...100),
            .init(name: "cpu", kind: .number, required: false, help: "CPUs per instance (default: the previous version's)", range: 0.01...64),
            .init(name: "memoryMB", kind: .integer, required: false, help: "memory per instance in MiB (default: the previous version's)", range: 16...262_144),
            .init(name: "env", kind: .stringMap, required: false, help: "environment variables (default: the previous version's); put secrets in secretEnv instead"),
            .init(name: "secretEnv", kind: .stringList, required: false, help: "names of the project's secrets (kiln secret set) given to the app as environment variables of the same names; the app's record keeps the names only (default: the previous version's)"),
            .init(name: "healthPath", kind: .string, required: false, help: "HTTP path that answers 2xx when an instance is healthy (default: the previous version's, else /health)"),
            .init(name: "healthTimeoutSeconds", kind: .integer, required: false, help: "how long every instance has to pass its health check before the version fails (default 60)", range: 1...3600),
        ], defaultTimeoutSeconds: 300),
        PluginSpec(name: "lb", summary: "point a domain of an nginx group at the new version's healthy instances", settings: [
            .init(name: "group", kind: .string, required: true, help: "the nginx group (its lb-agents watch /slb/{group}/)"),
            .init(name: "domain", kind: .string, required: true, help: "the domain nginx serves the app on"),
            .init(name: "app", kind: .string, required: true, help: "the app whose new version takes the traffic"),
        ], defaultTimeoutSeconds: 120),
        PluginSpec(name: "retire", summary: "take the previous version out of the load balancer, then stop its instances", settings: [
            .init(name: "app", kind: .string, required: true, help: "the app whose older versions are retired"),
            .init(name: "keep", kind: .integer, required: false, help: "older versions kept running, for a quick roll back (default 0)", range: 0...10),
            .init(name: "drainSeconds", kind: .integer, required: false, help: "how long an old version keeps running after nginx left it, for requests still in flight (default 2)", range: 0...600),
            .init(name: "version", kind: .integer, required: false, help: "retire this one version (never the live one) instead of those older than the live one; the console's retire button and POST /api/v1/apps/{app}/versions/{n}/retire set it", range: 1...1_000_000),
        ], defaultTimeoutSeconds: 120),
        PluginSpec(name: "notify", summary: "POST the build's outcome and image as JSON to a URL the scheduler allows (kiln scheduler --notify-allow)", settings: [
            .init(name: "url", kind: .string, required: false, help: "an http:// or https:// URL, under a prefix the scheduler's --notify-allow names (give url or urlSecret)"),
            .init(name: "urlSecret", kind: .string, required: false, help: "the name of a project secret holding the URL, for a URL with a token in it (give url or urlSecret)"),
        ], defaultTimeoutSeconds: 30),
    ]

    public static func spec(_ name: String) -> PluginSpec? { builtIn.first { $0.name == name } }

    /// Checks every step of `pipeline`; throws `KilnError.invalid` naming the step, the
    /// plugin and what is wrong, and what would be right.
    public static func validate(_ pipeline: [PipelineStep]) throws {
        if pipeline.count > 20 { throw KilnError.invalid("pipeline has \(pipeline.count) steps; at most 20") }
        for (i, step) in pipeline.enumerated() {
            let at = "pipeline step \(i + 1)"
            guard let spec = spec(step.plugin) else {
                throw KilnError.invalid("\(at): unknown plugin '\(Validation.printable(step.plugin))'; the plugins are \(builtIn.map(\.name).joined(separator: ", "))")
            }
            let here = "\(at) (\(spec.name))"
            if let t = step.timeoutSeconds, !(1...3600).contains(t) {
                throw KilnError.invalid("\(here): timeoutSeconds \(t) is out of range: use 1 to 3600")
            }
            for key in step.settings.keys.sorted() where !spec.settings.contains(where: { $0.name == key }) {
                throw KilnError.invalid("\(here): '\(Validation.printable(key))' is not a setting of \(spec.name); its settings are \(spec.settings.map(\.name).joined(separator: ", "))")
            }
            for setting in spec.settings {
                guard let value = step.settings[setting.name], value != .null else {
                    if setting.required { throw KilnError.invalid("\(here): setting '\(setting.name)' is required: \(setting.help)") }
                    continue
                }
                try check(value, against: setting, at: here)
            }
            try checkTogether(step.settings, of: spec, at: here)
        }
    }

    /// The rules that tie two settings of one plugin together.
    static func checkTogether(_ settings: [String: JSONValue], of spec: PluginSpec, at here: String) throws {
        func given(_ name: String) -> Bool { settings[name].map { $0 != .null } ?? false }
        switch spec.name {
        case "notify":
            switch (given("url"), given("urlSecret")) {
            case (true, true): throw KilnError.invalid("\(here): give either url or urlSecret, not both")
            case (false, false): throw KilnError.invalid("\(here): give url (an http:// or https:// URL) or urlSecret (the name of a project secret holding the URL)")
            default: break
            }
        case "deploy":
            guard case .object(let env)? = settings["env"], case .array(let secret)? = settings["secretEnv"] else { return }
            let both = secret.compactMap { if case .string(let n) = $0, env[n] != nil { n } else { nil } }
            if let name = both.first {
                throw KilnError.invalid("\(here): \(Validation.printable(name)) is in both env and secretEnv: keep it in one of them (secretEnv for a secret)")
            }
        default:
            break
        }
    }

    /// A secret's name, as `kiln secret set` takes it (an environment variable name).
    static func secretName(_ name: String, _ bad: (String) -> KilnError) throws {
        do { try SecretRules.name(name) } catch let e as KilnError { throw bad("names a bad secret: \(e.message)") }
    }

    static func check(_ value: JSONValue, against s: PluginSpec.Setting, at here: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("\(here): setting '\(s.name)' \(why); it is \(s.help)") }
        switch (s.kind, value) {
        case (.string, .string(let v)):
            if v.isEmpty { throw bad("is empty") }
            if !s.oneOf.isEmpty && !s.oneOf.contains(v) { throw bad("is '\(Validation.printable(v))', not one of \(s.oneOf.joined(separator: ", "))") }
            if s.name == "url" {
                guard let u = URL(string: v), ["http", "https"].contains(u.scheme?.lowercased() ?? ""), u.host?.isEmpty == false else {
                    throw bad("is not an http:// or https:// URL")
                }
            }
            if s.name == "app" { try Validation.projectName(v, what: "app name") }
            if s.name == "healthPath", !v.hasPrefix("/") || !v.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }) {
                throw bad("must be a path starting with '/', without spaces")
            }
            if s.name == "urlSecret" { try secretName(v, bad) }
            if s.name == "domain" { try Validation.domain(v) }
            if s.name == "group" { try Validation.groupName(v) }
        case (.integer, .number(let n)):
            if n != n.rounded() { throw bad("must be a whole number") }
            if let r = s.range, !r.contains(n) { throw bad("is \(Int(n)), out of range \(Int(r.lowerBound))…\(Int(r.upperBound))") }
        case (.number, .number(let n)):
            if let r = s.range, !r.contains(n) { throw bad("is \(n), out of range \(r.lowerBound)…\(r.upperBound)") }
        case (.boolean, .bool):
            break
        case (.stringList, .array(let items)):
            if items.isEmpty { throw bad("is empty") }
            for item in items { guard case .string(let v) = item, !v.isEmpty else { throw bad("must hold only non-empty strings") } }
            if s.name == "secretEnv" {
                let names = items.compactMap { if case .string(let v) = $0 { v } else { nil } }
                for name in names { try secretName(name, bad) }
                if Set(names).count != names.count { throw bad("names a secret twice") }
            }
        case (.stringMap, .object(let fields)):
            for (k, v) in fields {
                guard case .string = v else { throw bad("must map names to strings ('\(Validation.printable(k))' does not)") }
            }
        default:
            throw bad("must be a \(s.kind.rawValue)")
        }
    }
}
