"""DICOM de-identification: the PS3.15 Basic Application Level Confidentiality Profile.

Pure functions, bytes in and bytes out, no I/O: :func:`deidentify` takes one DICOM
Part 10 file (or a pydicom ``Dataset``) and returns a de-identified Part 10 file in
the same transfer syntax, with the pixel data untouched, plus a report
(:class:`DeidResult`).

What it does (``docs/deidentification.md`` has the full rules and their reasons):

* every attribute of PS3.15 Annex E Table E.1-1 (DICOM 2024b, encoded below as
  :data:`_TABLE_TEXT`) gets its Basic Profile action, in the data set and in every
  sequence item at any depth: ``X`` removed, ``Z`` emptied, ``D`` a dummy value,
  ``U`` a new UID; combined actions resolve to the mildest that keeps an IOD
  conformant without knowing the IOD (``X/Z``, ``Z/D``, ``X/Z/D``: ``Z``;
  ``X/D``: ``D``; ``X/Z/U*``: the sequence is kept and its items de-identified);
  a sequence that must be emptied or get a dummy value is left with no items;
* private attributes are removed (unless ``retain_private``), as are curve data
  (``50xx``) and overlay data and comments (``60xx,3000`` and ``60xx,4000``);
* UIDs become ``2.25.<n>``, ``n`` the first 128 bits of
  ``HMAC-SHA256(project key, project name, original UID)``: the same study
  de-identified twice for one project gets the same UIDs, references between
  instances stay consistent, and another project (or key) gets unrelated ones.
  A UID attribute the table does not list is mapped the same way unless it names
  a class or a transfer syntax, or is a UID the standard registers (stricter than
  the profile, which keeps unlisted attributes);
* PatientID and PatientName become the project's pseudonym of the *ledger* patient
  (:meth:`Project.pseudonym`, ``ML`` + 20 base32 characters);
* dates: ``remove`` (the profile), ``keep`` (Retain Longitudinal Temporal
  Information with Full Dates Option) or ``shift`` (Modified Dates Option: dates
  moved back by 1 to 3650 days, one offset per patient and project; times kept);
* PatientIdentityRemoved, DeidentificationMethod(CodeSequence) and
  LongitudinalTemporalInformationModified are set, and the file meta group is
  rebuilt (MediaStorageSOPInstanceUID follows the new SOPInstanceUID; the source's
  AE titles and private meta information are dropped; the preamble is zeroed);
* burned-in annotation is not cleaned but flagged (:func:`burned_in_risk`).

Errors are :class:`InvalidInput` with a code (``NOT_DICOM``, ``TRUNCATED``,
``MISSING_UID``, ``UNDECODABLE``, ``TOO_DEEP``) and a message that never quotes a
value read from the file.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import struct
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, DeflatedExplicitVRLittleEndian

from medledger.errors import InvalidInput, MedLedgerError

__all__ = [
    "DATE_OPTIONS",
    "PROFILE_EDITION",
    "DatesOption",
    "DeidResult",
    "Project",
    "burned_in_risk",
    "deidentify",
    "load_part10",
]

DatesOption = Literal["remove", "keep", "shift"]
DATE_OPTIONS: tuple[DatesOption, ...] = ("remove", "keep", "shift")

PROFILE_EDITION = "DICOM PS3.15 2024b, Annex E, Table E.1-1"

MIN_PROJECT_KEY = 16
"""Fewest bytes a project key may have (the CLI makes 32)."""

MAX_DEPTH = 32
"""Deepest sequence nesting accepted (real data sets stay under 10)."""

MAX_SHIFT_DAYS = 3650

DUMMY_TEXT = "ANONYMIZED"

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_KEEP_UID_SUFFIXES = ("ClassUID", "SyntaxUID")
_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010

# Codes of PS3.16 CID 7050 (De-identification Method).
_CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
_CODE_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
_CODE_MODIFIED_DATES = (
    "113107",
    "Retain Longitudinal Temporal Information Modified Dates Option",
)

# Burned-in annotation (docs/deidentification.md, "Burned-in annotation").
_BURNED_IN_MODALITIES = frozenset(
    {"US", "IVUS", "CR", "DX", "MG", "IO", "PX", "XA", "RF", "SC", "OT", "XC", "ES", "GM",
     "SM", "DOC"}
)  # fmt: skip
_BURNED_IN_SOP_ROOTS = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (and its multi-frame kinds)
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.77",  # VL: endoscopy, photography, microscopy, video
    "1.2.840.10008.5.1.4.1.1.104",  # Encapsulated PDF, CDA, STL, ...
)


# PS3.15 Table E.1-1, Basic Profile column, one attribute a line:
# tag, action, "d" if the Retain Longitudinal Temporal Information options apply
# (Full Dates: K; Modified Dates: C), keyword. Generated from the standard's
# table (DICOM 2024b); the curve, overlay and private rows are handled in code.
_TABLE_TEXT = """
00001000 X       - AffectedSOPInstanceUID
00001001 U       - RequestedSOPInstanceUID
00020003 U       - MediaStorageSOPInstanceUID
00041511 U       - ReferencedSOPInstanceUIDInFile
00080012 X/D     d InstanceCreationDate
00080013 X/Z/D   d InstanceCreationTime
00080014 U       - InstanceCreatorUID
00080015 X       d InstanceCoercionDateTime
00080017 U       - AcquisitionUID
00080018 U       - SOPInstanceUID
00080019 U       - PyramidUID
00080020 Z       d StudyDate
00080021 X/D     d SeriesDate
00080022 X/Z     d AcquisitionDate
00080023 Z/D     d ContentDate
00080024 X       d OverlayDate
00080025 X       d CurveDate
0008002A X/Z/D   d AcquisitionDateTime
00080030 Z       d StudyTime
00080031 X/D     d SeriesTime
00080032 X/Z     d AcquisitionTime
00080033 Z/D     d ContentTime
00080034 X       d OverlayTime
00080035 X       d CurveTime
00080050 Z       - AccessionNumber
00080054 X       - RetrieveAETitle
00080055 X       - StationAETitle
00080058 U       - FailedSOPInstanceUIDList
00080080 X/Z/D   - InstitutionName
00080081 X       - InstitutionAddress
00080082 X/Z/D   - InstitutionCodeSequence
00080090 Z       - ReferringPhysicianName
00080092 X       - ReferringPhysicianAddress
00080094 X       - ReferringPhysicianTelephoneNumbers
00080096 X       - ReferringPhysicianIdentificationSequence
0008009C Z       - ConsultingPhysicianName
0008009D X       - ConsultingPhysicianIdentificationSequence
00080106 D       d ContextGroupVersion
00080107 D       d ContextGroupLocalVersion
00080201 X       d TimezoneOffsetFromUTC
00081000 X       - NetworkID
00081010 X/Z/D   - StationName
00081030 X       - StudyDescription
0008103E X       - SeriesDescription
00081040 X       - InstitutionalDepartmentName
00081041 X       - InstitutionalDepartmentTypeCodeSequence
00081048 X       - PhysiciansOfRecord
00081049 X       - PhysiciansOfRecordIdentificationSequence
00081050 X       - PerformingPhysicianName
00081052 X       - PerformingPhysicianIdentificationSequence
00081060 X       - NameOfPhysiciansReadingStudy
00081062 X       - PhysiciansReadingStudyIdentificationSequence
00081070 X/Z/D   - OperatorsName
00081072 X/D     - OperatorIdentificationSequence
00081080 X       - AdmittingDiagnosesDescription
00081084 X       - AdmittingDiagnosesCodeSequence
00081088 X       - PyramidDescription
00081110 X/Z     - ReferencedStudySequence
00081111 X/Z/D   - ReferencedPerformedProcedureStepSequence
00081120 X       - ReferencedPatientSequence
00081140 X/Z/U   - ReferencedImageSequence
00081155 U       - ReferencedSOPInstanceUID
00081195 U       - TransactionUID
00082111 X       - DerivationDescription
00082112 X/Z/U   - SourceImageSequence
00083010 U       - IrradiationEventUID
00084000 X       - IdentifyingComments
00100010 Z       - PatientName
00100020 Z/D     - PatientID
00100021 X       - IssuerOfPatientID
00100030 Z       - PatientBirthDate
00100032 X       - PatientBirthTime
00100040 Z       - PatientSex
00100050 X       - PatientInsurancePlanCodeSequence
00100101 X       - PatientPrimaryLanguageCodeSequence
00100102 X       - PatientPrimaryLanguageModifierCodeSequence
00101000 X       - OtherPatientIDs
00101001 X       - OtherPatientNames
00101002 X       - OtherPatientIDsSequence
00101005 X       - PatientBirthName
00101010 X       - PatientAge
00101020 X       - PatientSize
00101030 X       - PatientWeight
00101040 X       - PatientAddress
00101050 X       - InsurancePlanIdentification
00101060 X       - PatientMotherBirthName
00101080 X       - MilitaryRank
00101081 X       - BranchOfService
00101090 X       - MedicalRecordLocator
00101100 X       - ReferencedPatientPhotoSequence
00102000 X       - MedicalAlerts
00102110 X       - Allergies
00102150 X       - CountryOfResidence
00102152 X       - RegionOfResidence
00102154 X       - PatientTelephoneNumbers
00102155 X       - PatientTelecomInformation
00102160 X       - EthnicGroup
00102180 X       - Occupation
001021A0 X       - SmokingStatus
001021B0 X       - AdditionalPatientHistory
001021C0 X       - PregnancyStatus
001021D0 X       d LastMenstrualDate
001021F0 X       - PatientReligiousPreference
00102203 X/Z     - PatientSexNeutered
00102297 X       - ResponsiblePerson
00102299 X       - ResponsibleOrganization
00104000 X       - PatientComments
00120010 D       - ClinicalTrialSponsorName
00120020 D       - ClinicalTrialProtocolID
00120021 Z       - ClinicalTrialProtocolName
00120022 X       - IssuerOfClinicalTrialProtocolID
00120023 X       - OtherClinicalTrialProtocolIDsSequence
00120030 Z       - ClinicalTrialSiteID
00120031 Z       - ClinicalTrialSiteName
00120032 X       - IssuerOfClinicalTrialSiteID
00120040 D       - ClinicalTrialSubjectID
00120041 X       - IssuerOfClinicalTrialSubjectID
00120042 D       - ClinicalTrialSubjectReadingID
00120043 X       - IssuerOfClinicalTrialSubjectReadingID
00120050 Z       - ClinicalTrialTimePointID
00120051 X       - ClinicalTrialTimePointDescription
00120055 X       - IssuerOfClinicalTrialTimePointID
00120060 Z       - ClinicalTrialCoordinatingCenterName
00120071 X       - ClinicalTrialSeriesID
00120072 X       - ClinicalTrialSeriesDescription
00120073 X       - IssuerOfClinicalTrialSeriesID
00120081 D       - ClinicalTrialProtocolEthicsCommitteeName
00120082 X       - ClinicalTrialProtocolEthicsCommitteeApprovalNumber
00120086 X       d EthicsCommitteeApprovalEffectivenessStartDate
00120087 X       d EthicsCommitteeApprovalEffectivenessEndDate
0014407C X       d CalibrationTime
0014407E X       d CalibrationDate
0016002B X       - MakerNote
0016004B X       - DeviceSettingDescription
0016004D X       - CameraOwnerName
0016004E X       - LensSpecification
0016004F X       - LensMake
00160050 X       - LensModel
00160051 X       - LensSerialNumber
00160070 X       - GPSVersionID
00160071 X       - GPSLatitudeRef
00160072 X       - GPSLatitude
00160073 X       - GPSLongitudeRef
00160074 X       - GPSLongitude
00160075 X       - GPSAltitudeRef
00160076 X       - GPSAltitude
00160077 X       - GPSTimeStamp
00160078 X       - GPSSatellites
00160079 X       - GPSStatus
0016007A X       - GPSMeasureMode
0016007B X       - GPSDOP
0016007C X       - GPSSpeedRef
0016007D X       - GPSSpeed
0016007E X       - GPSTrackRef
0016007F X       - GPSTrack
00160080 X       - GPSImgDirectionRef
00160081 X       - GPSImgDirection
00160082 X       - GPSMapDatum
00160083 X       - GPSDestLatitudeRef
00160084 X       - GPSDestLatitude
00160085 X       - GPSDestLongitudeRef
00160086 X       - GPSDestLongitude
00160087 X       - GPSDestBearingRef
00160088 X       - GPSDestBearing
00160089 X       - GPSDestDistanceRef
0016008A X       - GPSDestDistance
0016008B X       - GPSProcessingMethod
0016008C X       - GPSAreaInformation
0016008D X       d GPSDateStamp
0016008E X       - GPSDifferential
00180010 Z/D     - ContrastBolusAgent
00180027 X       d InterventionDrugStopTime
00180035 X       d InterventionDrugStartTime
00181000 X/Z/D   - DeviceSerialNumber
00181002 U       - DeviceUID
00181004 X       - PlateID
00181005 X       - GeneratorID
00181007 X       - CassetteID
00181008 X       - GantryID
00181009 X       - UniqueDeviceIdentifier
0018100A X       - UDISequence
0018100B U       - ManufacturerDeviceClassUID
00181012 X       d DateOfSecondaryCapture
00181014 X       d TimeOfSecondaryCapture
00181030 X/D     - ProtocolName
00181042 X       d ContrastBolusStartTime
00181043 X       d ContrastBolusStopTime
00181072 X       d RadiopharmaceuticalStartTime
00181073 X       d RadiopharmaceuticalStopTime
00181078 X       d RadiopharmaceuticalStartDateTime
00181079 X       d RadiopharmaceuticalStopDateTime
001811BB D       - AcquisitionFieldOfViewLabel
00181200 X       d DateOfLastCalibration
00181201 X       d TimeOfLastCalibration
00181202 X       d DateTimeOfLastCalibration
00181203 Z       d CalibrationDateTime
00181204 X       d DateOfManufacture
00181205 X       d DateOfInstallation
00181400 X/D     - AcquisitionDeviceProcessingDescription
00182042 U       - TargetUID
00184000 X       - AcquisitionComments
00185011 X       - TransducerIdentificationSequence
0018700A X/D     - DetectorID
0018700C X/D     d DateOfLastDetectorCalibration
0018700E X/D     d TimeOfLastDetectorCalibration
00189074 D       d FrameAcquisitionDateTime
00189151 D       d FrameReferenceDateTime
00189185 X       - RespiratoryMotionCompensationTechniqueDescription
00189367 D       - XRaySourceID
00189369 D       d SourceStartDateTime
0018936A D       d SourceEndDateTime
00189371 D       - XRayDetectorID
00189373 X       - XRayDetectorLabel
0018937B X       - MultienergyAcquisitionDescription
0018937F X       - DecompositionDescription
00189424 X       - AcquisitionProtocolDescription
00189516 X/D     d StartAcquisitionDateTime
00189517 X/D     d EndAcquisitionDateTime
00189623 D       d FunctionalSyncPulse
00189701 D       d DecayCorrectionDateTime
00189804 D       d ExclusionStartDateTime
00189919 Z/D     d InstructionPerformedDateTime
00189937 X       - RequestedSeriesDescription
0018A002 X       d ContributionDateTime
0018A003 X       - ContributionDescription
0020000D U       - StudyInstanceUID
0020000E U       - SeriesInstanceUID
00200010 Z       - StudyID
00200027 X       - PyramidLabel
00200052 U       - FrameOfReferenceUID
00200200 U       - SynchronizationFrameOfReferenceUID
00203401 X       - ModifyingDeviceID
00203403 X       d ModifiedImageDate
00203405 X       d ModifiedImageTime
00203406 X       - ModifiedImageDescription
00204000 X       - ImageComments
00209158 X       - FrameComments
00209161 U       - ConcatenationUID
00209164 U       - DimensionOrganizationUID
00281199 U       - PaletteColorLookupTableUID
00281214 U       - LargePaletteColorLookupTableUID
00284000 X       - ImagePresentationComments
00320012 X       - StudyIDIssuer
00320032 X       d StudyVerifiedDate
00320033 X       d StudyVerifiedTime
00320034 X       d StudyReadDate
00320035 X       d StudyReadTime
00321000 X       d ScheduledStudyStartDate
00321001 X       d ScheduledStudyStartTime
00321010 X       d ScheduledStudyStopDate
00321011 X       d ScheduledStudyStopTime
00321020 X       - ScheduledStudyLocation
00321021 X       - ScheduledStudyLocationAETitle
00321030 X       - ReasonForStudy
00321032 X       - RequestingPhysician
00321033 X       - RequestingService
00321040 X       d StudyArrivalDate
00321041 X       d StudyArrivalTime
00321050 X       d StudyCompletionDate
00321051 X       d StudyCompletionTime
00321060 X/Z     - RequestedProcedureDescription
00321066 X       - ReasonForVisit
00321067 X       - ReasonForVisitCodeSequence
00321070 X       - RequestedContrastAgent
00324000 X       - StudyComments
00340001 D       - FlowIdentifierSequence
00340002 D       - FlowIdentifier
00340005 D       - SourceIdentifier
00340007 D       d FrameOriginTimestamp
00380004 X       - ReferencedPatientAliasSequence
00380010 X       - AdmissionID
00380011 X       - IssuerOfAdmissionID
00380014 X       - IssuerOfAdmissionIDSequence
0038001A X       d ScheduledAdmissionDate
0038001B X       d ScheduledAdmissionTime
0038001C X       d ScheduledDischargeDate
0038001D X       d ScheduledDischargeTime
0038001E X       - ScheduledPatientInstitutionResidence
00380020 X       d AdmittingDate
00380021 X       d AdmittingTime
00380030 X       d DischargeDate
00380032 X       d DischargeTime
00380040 X       - DischargeDiagnosisDescription
00380050 X       - SpecialNeeds
00380060 X       - ServiceEpisodeID
00380061 X       - IssuerOfServiceEpisodeID
00380062 X       - ServiceEpisodeDescription
00380064 X       - IssuerOfServiceEpisodeIDSequence
00380300 X       - CurrentPatientLocation
00380400 X       - PatientInstitutionResidence
00380500 X       - PatientState
00384000 X       - VisitComments
003A0310 U       - MultiplexGroupUID
003A0314 D       d ImpedanceMeasurementDateTime
003A0329 X       - WaveformFilterDescription
003A032B X       - FilterLookupTableDescription
00400001 X       - ScheduledStationAETitle
00400002 X       d ScheduledProcedureStepStartDate
00400003 X       d ScheduledProcedureStepStartTime
00400004 X       d ScheduledProcedureStepEndDate
00400005 X       d ScheduledProcedureStepEndTime
00400006 X       - ScheduledPerformingPhysicianName
00400007 X       - ScheduledProcedureStepDescription
00400009 X       - ScheduledProcedureStepID
0040000B X       - ScheduledPerformingPhysicianIdentificationSequence
00400010 X       - ScheduledStationName
00400011 X       - ScheduledProcedureStepLocation
00400012 X       - PreMedication
00400241 X       - PerformedStationAETitle
00400242 X       - PerformedStationName
00400243 X       - PerformedLocation
00400244 X       d PerformedProcedureStepStartDate
00400245 X       d PerformedProcedureStepStartTime
00400250 X       d PerformedProcedureStepEndDate
00400251 X       d PerformedProcedureStepEndTime
00400253 X       - PerformedProcedureStepID
00400254 X       - PerformedProcedureStepDescription
00400275 X       - RequestAttributesSequence
00400280 X       - CommentsOnThePerformedProcedureStep
00400310 X       - CommentsOnRadiationDose
0040050A X       - SpecimenAccessionNumber
00400512 D       - ContainerIdentifier
00400513 Z       - IssuerOfTheContainerIdentifierSequence
0040051A X       - ContainerDescription
00400551 D       - SpecimenIdentifier
00400554 U       - SpecimenUID
00400555 X/Z     - AcquisitionContextSequence
00400562 Z       - IssuerOfTheSpecimenIdentifierSequence
00400600 X       - SpecimenShortDescription
00400602 X       - SpecimenDetailedDescription
00400610 Z       - SpecimenPreparationSequence
004006FA X       - SlideIdentifier
00401001 X       - RequestedProcedureID
00401002 X       - ReasonForTheRequestedProcedure
00401004 X       - PatientTransportArrangements
00401005 X       - RequestedProcedureLocation
0040100A X       - ReasonForRequestedProcedureCodeSequence
00401010 X       - NamesOfIntendedRecipientsOfResults
00401011 X       - IntendedRecipientsOfResultsIdentificationSequence
00401101 D       - PersonIdentificationCodeSequence
00401102 X       - PersonAddress
00401103 X       - PersonTelephoneNumbers
00401104 X       - PersonTelecomInformation
00401400 X       - RequestedProcedureComments
00402001 X       - ReasonForTheImagingServiceRequest
00402004 X       d IssueDateOfImagingServiceRequest
00402005 X       d IssueTimeOfImagingServiceRequest
00402008 X       - OrderEnteredBy
00402009 X       - OrderEntererLocation
00402010 X       - OrderCallbackPhoneNumber
00402011 X       - OrderCallbackTelecomInformation
00402016 Z       - PlacerOrderNumberImagingServiceRequest
00402017 Z       - FillerOrderNumberImagingServiceRequest
00402400 X       - ImagingServiceRequestComments
00403001 X       - ConfidentialityConstraintOnPatientDataDescription
00404005 X       d ScheduledProcedureStepStartDateTime
00404008 X       d ScheduledProcedureStepExpirationDateTime
00404010 X       d ScheduledProcedureStepModificationDateTime
00404011 X       d ExpectedCompletionDateTime
00404023 U       - ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
00404025 X       - ScheduledStationNameCodeSequence
00404027 X       - ScheduledStationGeographicLocationCodeSequence
00404028 X       - PerformedStationNameCodeSequence
00404030 X       - PerformedStationGeographicLocationCodeSequence
00404034 X       - ScheduledHumanPerformersSequence
00404035 X       - ActualHumanPerformersSequence
00404036 X       - HumanPerformerOrganization
00404037 X       - HumanPerformerName
00404050 X       d PerformedProcedureStepStartDateTime
00404051 X       d PerformedProcedureStepEndDateTime
00404052 X       d ProcedureStepCancellationDateTime
0040A023 X       d FindingsGroupRecordingDateTrial
0040A024 X       d FindingsGroupRecordingTimeTrial
0040A027 D       - VerifyingOrganization
0040A030 D       d VerificationDateTime
0040A032 X/D     d ObservationDateTime
0040A033 X       d ObservationStartDateTime
0040A073 D       - VerifyingObserverSequence
0040A075 D       - VerifyingObserverName
0040A078 X       - AuthorObserverSequence
0040A07A X       - ParticipantSequence
0040A07C X       - CustodialOrganizationSequence
0040A082 Z       d ParticipationDateTime
0040A088 Z       - VerifyingObserverIdentificationCodeSequence
0040A110 X       d DateOfDocumentOrVerbalTransactionTrial
0040A112 X       d TimeOfDocumentCreationOrVerbalTransactionTrial
0040A120 D       d DateTime
0040A121 D       d Date
0040A122 D       d Time
0040A123 D       - PersonName
0040A124 U       - UID
0040A13A D       d ReferencedDateTime
0040A171 U       - ObservationUID
0040A172 U       - ReferencedObservationUIDTrial
0040A192 X       d ObservationDateTrial
0040A193 X       d ObservationTimeTrial
0040A307 X       - CurrentObserverTrial
0040A352 X       - VerbalSourceTrial
0040A353 X       - AddressTrial
0040A354 X       - TelephoneNumberTrial
0040A358 X       - VerbalSourceIdentifierCodeSequenceTrial
0040A402 U       - ObservationSubjectUIDTrial
0040A730 D       - ContentSequence
0040DB06 X       d TemplateVersion
0040DB07 X       d TemplateLocalVersion
0040DB0C U       - TemplateExtensionOrganizationUID
0040DB0D U       - TemplateExtensionCreatorUID
0040E004 X       d HL7DocumentEffectiveTime
00420011 D       - EncapsulatedDocument
00440004 X       d ApprovalStatusDateTime
0044000B X       d ProductExpirationDateTime
00440010 X       d SubstanceAdministrationDateTime
00440104 D       d AssertionDateTime
00440105 X       d AssertionExpirationDateTime
0050001B X       - ContainerComponentID
00500020 X       - DeviceDescription
00500021 X       - LongDeviceDescription
00620021 U       - TrackingUID
00640003 U       - SourceFrameOfReferenceUID
00686226 D       d EffectiveDateTime
00686270 D       d InformationIssueDateTime
006A0003 D       - AnnotationGroupUID
006A0005 D       - AnnotationGroupLabel
006A0006 X       - AnnotationGroupDescription
00700001 D       - GraphicAnnotationSequence
00700082 X       d PresentationCreationDate
00700083 X       d PresentationCreationTime
00700084 Z/D     - ContentCreatorName
00700086 X       - ContentCreatorIdentificationCodeSequence
0070031A U       - FiducialUID
00701101 U       - PresentationDisplayCollectionUID
00701102 U       - PresentationSequenceCollectionUID
0072000A D       d HangingProtocolCreationDateTime
0072005E D       - SelectorAEValue
0072005F D       - SelectorASValue
00720061 D       d SelectorDAValue
00720063 D       d SelectorDTValue
00720065 D       - SelectorOBValue
00720066 D       - SelectorLOValue
00720068 D       - SelectorLTValue
0072006A D       - SelectorPNValue
0072006B D       d SelectorTMValue
0072006C D       - SelectorSHValue
0072006D D       - SelectorUNValue
0072006E D       - SelectorSTValue
00720070 D       - SelectorUTValue
00720071 D       - SelectorURValue
00741234 X       - ReceivingAE
00741236 X       - RequestingAE
00880140 U       - StorageMediaFileSetUID
00880200 X       - IconImageSequence
00880904 X       - TopicTitle
00880906 X       - TopicSubject
00880910 X       - TopicAuthor
00880912 X       - TopicKeywords
01000420 X       d SOPAuthorizationDateTime
04000100 U       - DigitalSignatureUID
04000105 D       d DigitalSignatureDateTime
04000115 D       - CertificateOfSigner
04000310 X       d CertifiedTimestamp
04000402 X       - ReferencedDigitalSignatureSequence
04000403 X       - ReferencedSOPInstanceMACSequence
04000404 X       - MAC
04000550 X       - ModifiedAttributesSequence
04000551 X       - NonconformingModifiedAttributesSequence
04000552 X       - NonconformingDataElementValue
04000561 X       - OriginalAttributesSequence
04000562 D       d AttributeModificationDateTime
04000563 D       - ModifyingSystem
04000564 Z       - SourceOfPreviousValues
04000565 D       - ReasonForTheAttributeModification
04000600 X       - InstanceOriginStatus
20300020 X       - TextString
21000040 X       d CreationDate
21000050 X       d CreationTime
21000070 X       - Originator
21000140 D       - DestinationAE
22000002 X/Z     - LabelText
22000005 X/Z     - BarcodeValue
30020121 X       - PositionAcquisitionTemplateName
30020123 X       - PositionAcquisitionTemplateDescription
30060002 D       - StructureSetLabel
30060004 X       - StructureSetName
30060006 X       - StructureSetDescription
30060008 Z       d StructureSetDate
30060009 Z       d StructureSetTime
30060024 U       - ReferencedFrameOfReferenceUID
30060026 Z       - ROIName
30060028 X       - ROIDescription
3006002D X       d ROIDateTime
3006002E X       d ROIObservationDateTime
30060038 X       - ROIGenerationDescription
3006004D X       - ROICreatorSequence
3006004E X       - ROIInterpreterSequence
30060085 X       - ROIObservationLabel
30060088 X       - ROIObservationDescription
300600A6 Z       - ROIInterpreter
300600C2 U       - RelatedFrameOfReferenceUID
30080024 D       d TreatmentControlPointDate
30080025 D       d TreatmentControlPointTime
30080054 X/D     d FirstTreatmentDate
30080056 X/D     d MostRecentTreatmentDate
30080105 X/Z     - SourceSerialNumber
30080162 D       d SafePositionExitDate
30080164 D       d SafePositionExitTime
30080166 D       d SafePositionReturnDate
30080168 D       d SafePositionReturnTime
30080250 X/D     d TreatmentDate
30080251 X/D     d TreatmentTime
300A0002 D       - RTPlanLabel
300A0003 X       - RTPlanName
300A0004 X       - RTPlanDescription
300A0006 X/D     d RTPlanDate
300A0007 X/D     d RTPlanTime
300A000B X       - TreatmentSites
300A000E X       - PrescriptionDescription
300A0013 U       - DoseReferenceUID
300A0016 X       - DoseReferenceDescription
300A0072 X       - FractionGroupDescription
300A0083 U       - ReferencedDoseReferenceUID
300A00B2 X/Z     - TreatmentMachineName
300A00C3 X       - BeamDescription
300A00DD X       - BolusDescription
300A0196 X       - FixationDeviceDescription
300A01A6 X       - ShieldingDeviceDescription
300A01B2 X       - SetupTechniqueDescription
300A0216 X       - SourceManufacturer
300A022C D       d SourceStrengthReferenceDate
300A022E D       d SourceStrengthReferenceTime
300A02EB X       - CompensatorDescription
300A0608 D       - TreatmentPositionGroupLabel
300A0609 U       - TreatmentPositionGroupUID
300A0611 Z       - RTAccessoryHolderSlotID
300A0615 Z       - RTAccessoryDeviceSlotID
300A0619 D       - RadiationDoseIdentificationLabel
300A0623 D       - RadiationDoseInVivoMeasurementLabel
300A062A D       - RTToleranceSetLabel
300A0650 U       - PatientSetupUID
300A0676 X       - EquipmentFrameOfReferenceDescription
300A067C D       - RadiationGenerationModeLabel
300A067D Z       - RadiationGenerationModeDescription
300A0700 U       - TreatmentSessionUID
300A0734 D       - TreatmentToleranceViolationDescription
300A0736 D       d TreatmentToleranceViolationDateTime
300A073A D       d RecordedRTControlPointDateTime
300A0741 D       d InterlockDateTime
300A0742 D       - InterlockDescription
300A0760 D       d OverrideDateTime
300A0783 D       - InterlockOriginDescription
300A0785 U       - ReferencedTreatmentPositionGroupUID
300A078E X       - PatientTreatmentPreparationProcedureParameterDescription
300A0792 X       - PatientTreatmentPreparationMethodDescription
300A0794 X       - PatientSetupPhotoDescription
300A079A X       - DisplacementReferenceLabel
300C0113 X       - ReasonForOmissionDescription
300C0127 D       d BeamHoldTransitionDateTime
300E0004 Z       d ReviewDate
300E0005 Z       d ReviewTime
300E0008 X/Z     - ReviewerName
30100006 U       - ConceptualVolumeUID
3010000B U       - ReferencedConceptualVolumeUID
3010000F Z       - ConceptualVolumeCombinationDescription
30100013 U       - ConstituentConceptualVolumeUID
30100015 U       - SourceConceptualVolumeUID
30100017 Z       - ConceptualVolumeDescription
3010001B Z       - DeviceAlternateIdentifier
3010002D D       - DeviceLabel
30100031 U       - ReferencedFiducialsUID
30100033 D       - UserContentLabel
30100034 D       - UserContentLongLabel
30100035 D       - EntityLabel
30100036 X       - EntityName
30100037 X       - EntityDescription
30100038 D       - EntityLongLabel
3010003B U       - RTTreatmentPhaseUID
30100043 Z       - ManufacturerDeviceIdentifier
3010004C X/D     d IntendedPhaseStartDate
3010004D X/D     d IntendedPhaseEndDate
30100054 D       - RTPrescriptionLabel
30100056 X/D     - RTTreatmentApproachLabel
3010005A Z       - RTPhysicianIntentNarrative
3010005C Z       - ReasonForSuperseding
30100061 X       - PriorTreatmentDoseDescription
3010006E U       - DosimetricObjectiveUID
3010006F U       - ReferencedDosimetricObjectiveUID
30100077 X/D     - TreatmentSite
3010007A Z       - TreatmentTechniqueNotes
3010007B Z       - PrescriptionNotes
3010007F Z       - FractionationNotes
30100081 Z       - PrescriptionNotesSequence
30100085 X       d IntendedFractionStartTime
40000010 X       - Arbitrary
40004000 X       - TextComments
40080040 X       - ResultsID
40080042 X       - ResultsIDIssuer
40080100 X       d InterpretationRecordedDate
40080101 X       d InterpretationRecordedTime
40080102 X       - InterpretationRecorder
40080108 X       d InterpretationTranscriptionDate
40080109 X       d InterpretationTranscriptionTime
4008010A X       - InterpretationTranscriber
4008010B X       - InterpretationText
4008010C X       - InterpretationAuthor
40080111 X       - InterpretationApproverSequence
40080112 X       d InterpretationApprovalDate
40080113 X       d InterpretationApprovalTime
40080114 X       - PhysicianApprovingInterpretation
40080115 X       - InterpretationDiagnosisDescription
40080118 X       - ResultsDistributionListSequence
40080119 X       - DistributionName
4008011A X       - DistributionAddress
40080200 X       - InterpretationID
40080202 X       - InterpretationIDIssuer
40080300 X       - Impressions
40084000 X       - ResultsComments
FFFAFFFA X       - DigitalSignaturesSequence
FFFCFFFC X       - DataSetTrailingPadding
"""


def _parse_table(text: str) -> dict[int, tuple[str, bool]]:
    table: dict[int, tuple[str, bool]] = {}
    for line in text.strip().splitlines():
        tag, action, dates, _keyword = line.split()
        table[int(tag, 16)] = (action, dates == "d")
    return table


_TABLE = _parse_table(_TABLE_TEXT)


# --------------------------------------------------------------------------- project


@dataclass(frozen=True)
class Project:
    """A research project: its name and its secret key (whoever holds the key can
    re-link pseudonyms and UIDs to their originals by trying candidates, so it
    stays with the institution that de-identifies)."""

    name: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or not self.name.isprintable():
            raise InvalidInput(
                "a project name has 1 to 64 printable characters", code="BAD_PROJECT"
            )
        if len(self.key) < MIN_PROJECT_KEY:
            raise InvalidInput(
                f"a project key has at least {MIN_PROJECT_KEY} bytes", code="BAD_PROJECT_KEY"
            )

    def _mac(self, purpose: str, value: str) -> bytes:
        msg = b"\0".join(
            (b"medledger-deid-v1", purpose.encode(), self.name.encode(), value.encode())
        )
        return hmac.new(self.key, msg, hashlib.sha256).digest()

    def pseudonym(self, patient: str) -> str:
        """The patient's stable pseudonym in this project: ``ML`` + 20 base32 chars."""
        return "ML" + base64.b32encode(self._mac("patient", patient)).decode()[:20]

    def map_uid(self, uid: str) -> str:
        """The UID that replaces ``uid``: ``2.25.`` + 128 bits of the HMAC."""
        return "2.25." + str(int.from_bytes(self._mac("uid", uid)[:16], "big"))

    def day_offset(self, patient: str) -> int:
        """Days (negative, -1 to -3650) that the Modified Dates option moves dates by."""
        return -(1 + int.from_bytes(self._mac("dates", patient)[:8], "big") % MAX_SHIFT_DAYS)


@dataclass(frozen=True)
class DeidResult:
    """One de-identified instance: the Part 10 bytes and what was done (no values)."""

    data: bytes
    burned_in_risk: bool
    actions: Counter[str]
    sop_uid: str
    series_uid: str
    study_uid: str


# --------------------------------------------------------------------------- reading


def _problem(message: str, code: str) -> InvalidInput:
    return InvalidInput(message, code=code)


def load_part10(data: bytes) -> Dataset:
    """Parse a DICOM Part 10 file, refusing anything that is not one or is cut short.

    pydicom reads a truncated file without complaint (the last value comes back
    short), so every top-level element is checked against the bytes: a defined
    length must be all there, an undefined length must end in its delimiter.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _problem("not a DICOM Part 10 file (no DICM prefix)", "NOT_DICOM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise _problem("not a DICOM Part 10 file", "NOT_DICOM")
    except (EOFError, struct.error, zlib.error) as e:
        raise _problem(f"the DICOM file is cut short ({type(e).__name__})", "TRUNCATED")
    except Exception as e:  # pydicom raises many kinds on malformed input
        raise _problem(f"the DICOM file cannot be parsed ({type(e).__name__})", "NOT_DICOM")
    if "TransferSyntaxUID" not in ds.file_meta:
        raise _problem("the file meta information has no transfer syntax", "NOT_DICOM")
    if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        data = _inflated(ds, data)  # element offsets count in the inflated data set
    _check_complete(ds, data)
    return ds


def _inflated(ds: Dataset, data: bytes) -> bytes:
    group_length = ds.file_meta.get("FileMetaInformationGroupLength")
    if not isinstance(group_length, int):
        raise _problem("a deflated file needs its meta group length", "NOT_DICOM")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(data[132 + 12 + group_length :])
    except zlib.error:
        raise _problem("the deflated data set is damaged", "TRUNCATED")
    if not inflater.eof:
        raise _problem("the deflated data set is cut short", "TRUNCATED")
    return body


def _check_complete(ds: Dataset, data: bytes) -> None:
    end = 0
    for elem in ds._dict.values():  # the raw elements, before any conversion
        if not isinstance(elem, RawDataElement) or elem.value_tell is None:
            continue
        got = 0 if elem.value is None else len(elem.value)
        if elem.length == _UNDEFINED:
            stop = elem.value_tell + got
            if data[stop : stop + 8] not in (_DELIMITER_LE, _DELIMITER_BE):
                raise _problem(f"element {elem.tag} is cut short", "TRUNCATED")
            end = max(end, stop + 8)
        else:
            if got != elem.length:
                raise _problem(f"element {elem.tag} is cut short", "TRUNCATED")
            end = max(end, elem.value_tell + got)
    if end != len(data):  # pydicom drops a partial element header at the end
        raise _problem("the file is cut short", "TRUNCATED")


# --------------------------------------------------------------------------- actions


def _is_overlay_or_curve(tag: BaseTag) -> bool:
    group, elem = tag.group, tag.element
    if 0x5000 <= group <= 0x501E and group % 2 == 0:
        return True
    return 0x6000 <= group <= 0x601E and group % 2 == 0 and elem in (0x3000, 0x4000)


def _resolve(action: str) -> str:
    """The one action a combined PS3.15 action stands for here (module docstring)."""
    if action in ("X/Z", "Z/D", "X/Z/D"):
        return "Z"
    if action == "X/D":
        return "D"
    if action == "X/Z/U":
        return "U*"
    return action


def _is_registered_uid(value: str) -> bool:
    return UID(value).name != value


class _Walker:
    def __init__(
        self, project: Project, patient: str, dates: DatesOption, retain_private: bool
    ) -> None:
        self.project = project
        self.pseudonym = project.pseudonym(patient)
        self.offset = dt.timedelta(days=project.day_offset(patient))
        self.dates = dates
        self.retain_private = retain_private
        self.actions: Counter[str] = Counter()

    # ---- values

    def _uid(self, value: object) -> object:
        if isinstance(value, MultiValue | list):
            return [self.project.map_uid(str(v)) if str(v) else "" for v in value]
        text = str(value) if value is not None else ""
        return self.project.map_uid(text) if text else text

    def _empty(self, elem: DataElement) -> None:
        elem.value = Sequence() if elem.VR == "SQ" else None
        self.actions["Z"] += 1

    def _dummy(self, elem: DataElement) -> None:
        if elem.VR in _TEXT_VRS:
            elem.value = DUMMY_TEXT
            self.actions["D"] += 1
        elif elem.VR == "UI":
            elem.value = self._uid(elem.value)
            self.actions["U"] += 1
        else:  # dates, numbers, binary and sequences: no value is the safest dummy
            self._empty(elem)

    def _shift_one(self, vr: str, text: str) -> str:
        text = text.strip()
        if not text or vr == "TM":
            return text
        digits = text[:8]
        if len(digits) < 8 or not digits.isdigit():
            return ""
        try:
            day = dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) + self.offset
        except (ValueError, OverflowError):
            return ""
        return day.strftime("%Y%m%d").rjust(8, "0") + text[8:]

    def _shift(self, elem: DataElement) -> None:
        if elem.VR not in _DATE_VRS:
            if elem.VR in ("OB", "UN"):  # timestamps we cannot shift: removed
                self.actions["X"] += 1
                raise _Delete
            self.actions["K"] += 1
            return
        value = elem.value
        if isinstance(value, MultiValue | list):
            elem.value = [self._shift_one(elem.VR, str(v)) for v in value]
        elif value not in (None, ""):
            elem.value = self._shift_one(elem.VR, str(value))
        self.actions["C"] += 1

    # ---- data sets

    def walk(self, ds: Dataset, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise _problem(f"sequences nested deeper than {MAX_DEPTH}", "TOO_DEEP")
        for tag in list(ds.keys()):
            try:
                self._element(ds, ds[tag], depth)
            except _Delete:
                del ds[tag]

    def _items(self, elem: DataElement, depth: int) -> None:
        for item in elem.value or ():
            self.walk(item, depth + 1)

    def _element(self, ds: Dataset, elem: DataElement, depth: int) -> None:
        tag = elem.tag
        if tag.is_private:
            if not self.retain_private:
                self.actions["private"] += 1
                raise _Delete
            if elem.VR == "SQ":
                self._items(elem, depth)
            return
        if _is_overlay_or_curve(tag):
            self.actions["X"] += 1
            raise _Delete
        if depth == 0 and tag in (_PATIENT_ID, _PATIENT_NAME):
            elem.value = self.pseudonym
            self.actions["pseudonym"] += 1
            return
        entry = _TABLE.get(int(tag))
        if entry is None:
            self._unlisted(elem, depth)
            return
        action, is_date = entry
        if is_date and self.dates == "keep":
            self.actions["K"] += 1
            return
        if is_date and self.dates == "shift":
            self._shift(elem)
            return
        self._apply(elem, _resolve(action), depth)

    def _apply(self, elem: DataElement, action: str, depth: int) -> None:
        if action == "X":
            self.actions["X"] += 1
            raise _Delete
        if action == "Z":
            self._empty(elem)
        elif action == "D":
            self._dummy(elem)
        elif action == "U":
            elem.value = self._uid(elem.value)
            self.actions["U"] += 1
        elif elem.VR == "SQ":  # U*: keep the sequence, de-identify its items
            self._items(elem, depth)
        elif elem.VR == "UI":
            elem.value = self._uid(elem.value)
            self.actions["U"] += 1
        else:
            self._empty(elem)

    def _unlisted(self, elem: DataElement, depth: int) -> None:
        if elem.VR == "SQ":
            self._items(elem, depth)
        elif elem.VR == "UI" and elem.value not in (None, ""):
            keyword = elem.keyword or ""
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            if keyword.endswith(_KEEP_UID_SUFFIXES) or all(
                _is_registered_uid(str(v)) for v in values
            ):
                return
            elem.value = self._uid(elem.value)
            self.actions["U"] += 1


class _Delete(Exception):
    """Raised by an element's action to remove it from its data set."""


# --------------------------------------------------------------------------- public


def burned_in_risk(ds: Dataset) -> bool:
    """Whether the pixels may show burned-in text (names, IDs, dates).

    ``BurnedInAnnotation`` YES: yes; NO: no. Absent or empty (or any other value):
    yes for the modalities and SOP classes where text in the pixels is common
    (ultrasound, secondary capture and other captured screens, projection
    radiography, endoscopy and photography, encapsulated documents), no for the
    rest (CT, MR, NM, PT, RT, SEG, SR, ...).
    """
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag in ("YES", "NO"):
        return flag == "YES"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if modality in _BURNED_IN_MODALITIES:
        return True
    return any(sop_class == r or sop_class.startswith(r + ".") for r in _BURNED_IN_SOP_ROOTS)


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise _problem(f"the instance has no {keyword}", "MISSING_UID")
    return value


def deidentify(
    source: bytes | Dataset,
    project: Project,
    patient: str,
    *,
    dates: DatesOption = "remove",
    retain_private: bool = False,
) -> DeidResult:
    """De-identify one instance for ``project``; ``patient`` is its ledger patient ID
    (the pseudonym is derived from it, never from the DICOM PatientID).

    ``source`` as a ``Dataset`` is modified in place. ``retain_private`` keeps the
    private attributes (not a PS3.15 option: only for private data known to be
    safe). Raises :class:`InvalidInput` (codes in the module docstring).
    """
    if dates not in DATE_OPTIONS:
        raise _problem("dates is one of remove, keep, shift", "BAD_DATES_OPTION")
    if not patient:
        raise _problem("the ledger patient ID is required", "BAD_PATIENT")
    ds = load_part10(source) if isinstance(source, bytes | bytearray) else source
    if not isinstance(ds, Dataset) or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise _problem("the data set has no file meta information", "NOT_DICOM")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _deidentify(ds, project, patient, dates, retain_private)
    except MedLedgerError:
        raise
    except RecursionError:
        raise _problem("sequences nested too deep", "TOO_DEEP")
    except Exception as e:  # pydicom's conversion errors on malformed values
        raise _problem(f"the data set cannot be de-identified ({type(e).__name__})", "UNDECODABLE")


def _deidentify(
    ds: Dataset, project: Project, patient: str, dates: DatesOption, retain_private: bool
) -> DeidResult:
    _required_uid(ds, "SOPInstanceUID")
    _required_uid(ds, "StudyInstanceUID")
    transfer_syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    risk = burned_in_risk(ds)

    walker = _Walker(project, patient, dates, retain_private)
    walker.walk(ds)
    ds.PatientID = walker.pseudonym
    ds.PatientName = walker.pseudonym
    ds.PatientIdentityRemoved = "YES"
    if risk:
        ds.BurnedInAnnotation = "YES"
    ds.LongitudinalTemporalInformationModified = {
        "remove": "REMOVED",
        "keep": "UNMODIFIED",
        "shift": "MODIFIED",
    }[dates]
    codes = [_CODE_BASIC]
    if dates == "keep":
        codes.append(_CODE_FULL_DATES)
    elif dates == "shift":
        codes.append(_CODE_MODIFIED_DATES)
    method = ["PS3.15 E.1 Basic Application Level Confidentiality Profile", f"dates={dates}"]
    if retain_private:
        method.append("private attributes retained")
    ds.DeidentificationMethod = method
    ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in codes])

    meta = FileMetaDataset()
    if sop_class:
        meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDLEDGER_DEID"
    ds.file_meta = meta
    ds.preamble = b"\0" * 128

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return DeidResult(
        data=buf.getvalue(),
        burned_in_risk=risk,
        actions=walker.actions,
        sop_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        study_uid=str(ds.StudyInstanceUID),
    )


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
