/// Which older builds of a branch a newer build cancels (`Project.supersede`). Its raw value
/// is what the API, etcd and `kiln project add --supersede` carry.
public enum Supersede: String, Codable, Sendable, CaseIterable {
    /// The queued ones.
    case queued
    /// The queued ones, and the assigned and running ones too.
    case running

    /// Decodes the raw value; an unknown one is refused with a `KilnError.invalid` that names
    /// the field and the choices (the API answers it as a 400), not a bare decoding error.
    public init(from decoder: Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard let mode = Supersede(rawValue: raw) else {
            throw KilnError.invalid("supersede '\(Validation.printable(raw))' is not an option: use \"queued\" (a newer build of a branch cancels the queued ones) or \"running\" (the running ones too)")
        }
        self = mode
    }
}
