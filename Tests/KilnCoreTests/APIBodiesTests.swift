import Foundation
import KilnCore
import Testing

/// The API's wire types and the word-valued settings: what goes over the wire and into etcd.
struct APIBodiesTests {
    static let project = #"{"name":"p","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make""#

    @Test func supersedeCarriesItsRawValueOnTheWireAndInEtcd() throws {
        for mode in Supersede.allCases {
            let p = try KilnJSON.decode(Project.self, from: Self.project + #","supersede":"\#(mode.rawValue)"}"#)
            #expect(p.supersede == mode)
            #expect(try KilnJSON.encode(p).contains(#""supersede":"\#(mode.rawValue)""#))
        }
        #expect(Supersede.allCases.map(\.rawValue) == ["queued", "running"])
        #expect(try KilnJSON.decode(Project.self, from: Self.project + "}").supersede == nil)
    }

    @Test func anUnknownSupersedeIsRefusedWithTheChoices() {
        let error = #expect(throws: KilnError.self) {
            try KilnJSON.decode(Project.self, from: Self.project + #","supersede":"always"}"#)
        }
        #expect(error?.isInvalid == true)
        #expect(error?.message.contains("supersede 'always' is not an option") == true)
        #expect(error?.message.contains(#""queued""#) == true && error?.message.contains(#""running""#) == true)
    }

    @Test func aBuildRequestSendsOnlyWhatItSets() throws {
        #expect(try KilnJSON.encode(BuildRequest()) == "{}")
        #expect(try KilnJSON.encode(BuildRequest(ref: "main", priority: -3)) == #"{"priority":-3,"ref":"main"}"#)
        let empty = try KilnJSON.decode(BuildRequest.self, from: "{}")
        #expect(empty.ref == nil && empty.commit == nil && empty.tag == nil && empty.mvncache == nil && empty.trigger == nil && empty.priority == nil)
    }

    @Test func theErrorBodyIsOneField() throws {
        #expect(try KilnJSON.encode(APIErrorBody(error: "no such build")) == #"{"error":"no such build"}"#)
        #expect(try KilnJSON.decode(APIErrorBody.self, from: #"{"error":"x"}"#) == APIErrorBody(error: "x"))
    }

    @Test func anAppStatusReadsBackAsItWasSent() throws {
        let status = AppStatus(app: App(name: "demo"), domains: [
            .init(group: "web", domain: "demo.localhost", servers: ["127.0.0.1:20001"], version: 3,
                  agents: [.init(id: "lb-1", listen: "127.0.0.1:8088", appliedRevision: 42, current: false, rejected: "nginx -t failed")]),
        ])
        let back = try KilnJSON.decode(AppStatus.self, from: try KilnJSON.encode(status))
        #expect(back.app.name == "demo")
        #expect(back.domains.map(\.domain) == ["demo.localhost"])
        #expect(back.domains[0].version == 3 && back.domains[0].servers == ["127.0.0.1:20001"])
        let agent = try #require(back.domains[0].agents.first)
        #expect(agent.id == "lb-1" && agent.appliedRevision == 42 && !agent.current && agent.rejected == "nginx -t failed")
    }
}
