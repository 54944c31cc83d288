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
/// The schedulers are tried in the order given until one answers: one that cannot be reached,
/// answers 5xx or something that is not `BuildSecrets` is passed over; 401 and 403 are final,
/// since every scheduler reads the same etcd. No error carries an answer's body but the
/// scheduler's own `error` text of a refusal, and none ever a value.
public struct SchedulerSecretsClient: BuildSecretsSource {
    /// Base URLs (`SchedulerURLs.parse`).
    public let schedulers: [String]
    let credentials: RegistryCredentials
    let httpClient: HTTPClient
    /// Per request, in seconds.
    let timeoutSeconds: Int64

    /// A scheduler that is down must not hold every build for the whole request time: the
    /// HTTP client tries a refused connection again until its connect timeout (3 s here), and
    /// `HTTPClient.shared` has none shorter than the request's.
    static let http = OutgoingHTTP.Settings(connect: .seconds(3), read: .seconds(30), retryConnecting: true)

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

    public func secrets(for build: String) async throws -> BuildSecrets {
        var tried: [String] = []
        for base in schedulers {
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
                if let secrets = try? KilnJSON.decode(BuildSecrets.self, from: body) { return secrets }
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
        throw SecretsUnavailable("no scheduler gave the secrets of build \(build); tried \(tried.joined(separator: ", ")). Check --scheduler (env KILN_SCHEDULER) and that a scheduler runs there")
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
