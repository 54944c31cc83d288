/// One field's problem with a value a person sent: the field, named as the API's JSON names
/// it, and the message the API answers for it.
///
/// A model checks each field separately and returns every problem (`Project.problems()`,
/// `BuildRequest.problems()`); its `validate()` throws the first of them. The console shows
/// each beside its field and the API answers the first as its 400, so the two never disagree.
public struct FieldProblem: Sendable, Equatable, CustomStringConvertible {
    public var field: String
    public var message: String

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }

    /// `check`'s `KilnError` as a problem of `field`, or nil when it passes.
    public static func check(_ field: String, _ check: () throws -> Void) -> FieldProblem? {
        do {
            try check()
            return nil
        } catch let error as KilnError {
            return FieldProblem(field: field, message: error.message)
        } catch {
            return FieldProblem(field: field, message: "\(error)")
        }
    }

    public var description: String { "\(field): \(message)" }
}

extension Array where Element == FieldProblem {
    /// Throws the first problem as `KilnError.invalid` (what the API answers), if there is one.
    public func throwFirst() throws {
        if let first { throw KilnError.invalid(first.message) }
    }

    /// The problems of one field, for a form that shows them beside it.
    public func of(_ field: String) -> [FieldProblem] { filter { $0.field == field } }
}
