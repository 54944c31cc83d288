import AsyncHTTPClient
import DockerAPI
import Foundation
import KilnCore
import TLSTrust

/// Asks the schedulers for the secrets of a build this agent holds:
/// `POST {scheduler}/agent/v1/builds/{build}/secrets` with HTTP Basic `agentID:machineToken`
/// (the agent's `--registry-credentials`, the machine credential the registry's token service
/// knows it by). A scheduler answers 200 with `BuildSecrets` only to the agent the dispatcher
/// granted the build (`/kiln/grants/{agent}/{build}`), 401 to a credential it does not know,
/// 403 to an agent that does not hold the build.
///
/// The schedulers are tried until one answers, the one that answered last first (the order
/// given before any has): one that cannot be reached, answers 5xx or something that is not
/// `BuildSecrets` is passed over, and the whole list is tried again up to three times a second
/// apart while the request's time lasts; 401 and 403 are final, since every scheduler reads
/// the same etcd. A scheduler host cut off the network costs one connect timeout (3 s) to the
/// first build that meets it, not every build the whole request time. No error carries an answer's body but the
/// scheduler's own `error` text of a refusal, and none ever a value.
public struct SchedulerSecretsClient: BuildSecretsSource {
    /// Base URLs (`SchedulerURLs.parse`).
    public let schedulers: [String]
    let credentials: RegistryCredentials
    let httpClient: HTTPClient
    /// Per request, in seconds.
    let timeoutSeconds: Int64

    /// A scheduler that is down must not hold every build for the whole request time: one
    /// connect attempt of at most 3 s each (the HTTP client's own retries would go on until the
    /// request's deadline against a host that never answers), the retrying done here; and no
    /// connection kept past 2 s (one request a build: a kept connection to a scheduler host cut
    /// off meanwhile would take the whole read time to find dead).
    static let http = OutgoingHTTP.Settings(connect: .seconds(3), read: .seconds(30), retryConnecting: false, idle: .seconds(2))
    /// The scheduler that answered last, shared by the copies of this client.
    let lastAnswered = Locked<String?>(nil)
    /// Rounds over the whole list when no scheduler could be reached.
    static let rounds = 3

    /// The process's client for schedulers whose certificates `ca` (`kiln agent --ca-file`)
    /// or the system's roots signed. Never shut down.
    public static func httpClient(trusting ca: TrustedCA?) -> HTTPClient {
        OutgoingHTTP.client(http, trusting: ca)
    }

    /// The client trusting the system's roots only.
    public static var defaultHTTPClient: HTTPClient { httpClient(trusting: nil) }

    public init(schedulers: [String], credentials: RegistryCredentials, httpClient: HTTPClient = defaultHTTPClient, timeoutSeconds: Int64 = 30) {
        self.schedulers = schedulers
        self.credentials = credentials
        self.httpClient = httpClient
        self.timeoutSeconds = timeoutSeconds
    }

    /// The schedulers, the one that answered last first.
    var order: [String] {
        guard let last = lastAnswered.value, schedulers.contains(last) else { return schedulers }
        return [last] + schedulers.filter { $0 != last }
    }

    public func secrets(for build: String) async throws -> BuildSecrets {
        let deadline = ContinuousClock.now + .seconds(timeoutSeconds)
        var tried: [String] = []
        for round in 1...Self.rounds {
            tried = []  // the last round's reasons are the ones to name
            if let answer = try await secretsRound(for: build, tried: &tried) { return answer }
            guard round < Self.rounds, ContinuousClock.now + .seconds(1) < deadline else { break }
            try await Task.sleep(for: .seconds(1))
        }
        throw SecretsUnavailable("no scheduler gave the secrets of build \(build); tried \(tried.joined(separator: ", ")). Check --scheduler (env KILN_SCHEDULER) and that a scheduler runs there")
    }

    /// One pass over the schedulers: the secrets, nil when none answered with them (each
    /// reason added to `tried`), or a final refusal thrown.
    private func secretsRound(for build: String, tried: inout [String]) async throws -> BuildSecrets? {
        for base in order {
            var request = HTTPClientRequest(url: "\(base)/agent/v1/builds/\(build.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_."))) ?? build)/secrets")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Basic " + Data("\(credentials.user):\(credentials.password)".utf8).base64EncodedString())
            request.headers.add(name: "Accept", value: "application/json")
            let status: UInt
            let body: [UInt8]
            do {
                let response = try await httpClient.execute(request, timeout: .seconds(timeoutSeconds))
                status = response.status.code
                body = Array(try await response.body.collect(upTo: 8 << 20).readableBytesView)
            } catch {
                if Task.isCancelled { throw CancellationError() }
                if let tls = TLSFailure.explain(error, url: base, option: "the agent's --ca-file (env KILN_CA_FILE)") {
                    tried.append("\(base) (\(tls))")
                } else {
                    tried.append("\(base) (\(Self.unreachable(error)))")
                }
                continue
            }
            switch status {
            case 200:
                if let secrets = try? KilnJSON.decode(BuildSecrets.self, from: body) {
                    lastAnswered.value = base
                    return secrets
                }
                tried.append("\(base) (answered 200 with something that is not a build's secrets)")
            case 401:
                throw SecretsUnavailable("the scheduler refused this agent's machine credential (user \(credentials.user), at \(base)): check the file given to --registry-credentials (make one with `kiln machine add \(credentials.user) --kind agent --out FILE`)")
            case 403:
                throw SecretsUnavailable("the scheduler says this agent does not hold build \(build) (at \(base)): the build was given to another agent or ended")
            case 404:
                tried.append("\(base) (HTTP 404: no secrets endpoint there; is it a Kiln scheduler of this version, and is --scheduler its API address?)")
            default:
                tried.append("\(base) (HTTP \(status)\(Self.errorText(body).map { ": \($0)" } ?? ""))")
            }
        }
        return nil
    }

    /// The scheduler's `{"error": …}` text, shortened and printable.
    private static func errorText(_ body: [UInt8]) -> String? {
        struct Answer: Decodable { let error: String? }
        guard let text = (try? JSONDecoder().decode(Answer.self, from: Data(body)))?.error, !text.isEmpty else { return nil }
        return Validation.printable(String(text.prefix(200)))
    }

    private static func unreachable(_ error: Error) -> String {
        let text = "\(error)"
        return "unreachable: " + (text.count > 160 ? String(text.prefix(160)) + "…" : text)
    }
}
