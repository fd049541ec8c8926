SELECT id, email, first_name, last_name, blocklisted, quarantine_reason FROM profiles WHERE email = :email
